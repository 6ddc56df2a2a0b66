"""Reports from a run folder's files only: ``report.md`` + ``report.html`` + ``figures/``, and the
audit page. Training code never imports this module.

    label-refinery report runs/fmnist     # after `chain` (and `analyze` for label plots and figures)

Plots use matplotlib's object API (``Figure``, rendered by Agg) and leave pyplot's state alone. The HTML embeds every picture (base64 PNG), so one file opens in
any browser without a server; the PNGs are also written to ``figures/`` for the markdown.
"""

from __future__ import annotations

import base64
import html
import io
import zipfile
from pathlib import Path

import numpy as np

from ..checkpoint import read_meta
from ..errors import UserError
from ..files import atomic_write, read_json

_REANALYZE = "; re-run label-refinery analyze on the run to write it again"
CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:14px;text-align:left;vertical-align:top}
th{background:#f3f3f3}img.pic{image-rendering:pixelated;width:96px;height:96px;border:1px solid #999}
figure{display:inline-block;margin:4px;text-align:center;font-size:12px}.reason{color:#a00}td.crops{white-space:nowrap}"""


def png(array_or_fig) -> bytes:
    """PNG bytes of a uint8 ``[H, W, C]`` array or a matplotlib figure."""
    buf = io.BytesIO()
    if isinstance(array_or_fig, np.ndarray):
        from PIL import Image

        a = array_or_fig[..., 0] if array_or_fig.shape[-1] == 1 else array_or_fig
        Image.fromarray(a).save(buf, format="PNG")
    else:
        array_or_fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def img_tag(data: bytes, alt: str, cls: str = "") -> str:
    return f'<img class="{cls}" alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def page(title: str, body: str) -> str:
    # The script marks the title once every picture has decoded: a headless browser check reads it.
    check = (
        "<script>window.addEventListener('load',()=>{const i=[...document.images];"
        "document.title+=' ['+i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length+' images]';});</script>"
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style>{check}</head><body>{body}</body></html>\n"


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(k))}</td>" for k, _ in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(v) -> str:
    return f"{v:.2f}" if isinstance(v, float) else html.escape(str(v if v is not None else "–"))


_MARKDOWN = str.maketrans({c: "\\" + c for c in "\\`*_[]<>|~&"} | {"\n": " ", "\r": " "})


def md_text(text) -> str:
    """``text`` (a class, model or folder name) as literal markdown inside a line: the characters that
    mark emphasis, code, links, table cells and HTML (``\\ ` * _ [ ] < > | ~ &``) backslash-escaped,
    line breaks as spaces, so a name cannot break a table, add a link or inject HTML into report.md.

    Example:
        >>> print(md_text("a|b <i>"))
        a\\|b \\<i\\>
    """
    return str(text).translate(_MARKDOWN)


def _md_cell(v) -> str:
    return f"{v:.2f}" if isinstance(v, float) else md_text(v if v is not None else "–")


# ---- audit ------------------------------------------------------------------------------------------


REVIEW_JS = """
function reviewedCsv(){
  // a cell that a spreadsheet would run as a formula gets a ' in front (files.csv_cell; relabel removes it)
  const q=v=>{v=String(v); if(/^[=+\\-@\\t\\r']/.test(v)) v="'"+v; return '"'+v.replace(/"/g,'""')+'"';};
  const lines=['index,given,suggested,suggested_p,flag,decision,label'];
  for(const tr of document.querySelectorAll('tr[data-index]')){
    const d=tr.dataset, pick=tr.querySelector('input[type=radio]:checked');
    const decision=pick?pick.value:'';
    const label=decision==='accept'?d.suggested:(decision==='reject'?d.given:'');
    lines.push([d.index,q(d.given),q(d.suggested),d.p,d.flag,decision,q(label)].join(','));
  }
  return lines.join('\\n')+'\\n';
}
function downloadReviewed(){
  const a=document.createElement('a');
  a.href=URL.createObjectURL(new Blob([reviewedCsv()],{type:'text/csv'}));
  a.download='reviewed.csv'; document.body.appendChild(a); a.click(); a.remove();
}
function countDecisions(){
  const n=document.querySelectorAll('input[type=radio]:checked').length;
  document.getElementById('decided').textContent=n;
}
"""


def hygiene_html(sections: list[dict]) -> str:
    """The hygiene tables (audit.py), each behind a filter button: image, its closest match, the score."""
    if not sections:
        return ""
    buttons = "".join(
        f"<button onclick=\"showOnly('{s['key']}')\">{html.escape(s['title'])}</button> " for s in sections
    )
    tables = []
    for s in sections:
        trs = "".join(
            f"<tr><td>{img_tag(png(i['image']), i['caption'], 'pic')}<br>{html.escape(i['caption'])}</td>"
            + (f"<td>{img_tag(png(i['match']), i['match_caption'], 'pic')}<br>{html.escape(i['match_caption'])}</td>" if "match" in i else "")
            + "</tr>"
            for i in s["items"]
        )
        tables.append(f"<div class='hygiene' id='h-{s['key']}'><h3>{html.escape(s['title'])}</h3><table>{trs}</table></div>")
    script = ("<script>function showOnly(k){document.querySelectorAll('.hygiene').forEach("
              "d=>{d.style.display=(k==='all'||d.id==='h-'+k)?'':'none';});}</script>")  # fmt: skip
    return (
        "<h2>Image hygiene</h2><p>From the embeddings of a model of the run (audit.csv: duplicate_of, "
        "duplicate_sim, test_duplicate_of, test_duplicate_sim, outlier_score). Show: "
        f"{buttons}<button onclick=\"showOnly('all')\">all</button></p>{''.join(tables)}{script}"
    )


def audit_html(rows: list[dict], pictures: list[dict], *, run: str, summary: dict, hygiene: list[dict] | None = None) -> str:
    """The audit page: per suspicious image its picture, given and suggested label, the reason, the
    top-3 and three crops with their own top-3, and accept/reject buttons; "download reviewed CSV"
    saves the decisions (``decision``: accept, reject or empty; ``label``: the label to keep) for
    ``label-refinery relabel --reviewed``. Works offline: one file, no server, no network."""
    trs = []
    for r, pic in zip(rows, pictures):
        crops = "".join(
            f"<figure>{img_tag(png(c), 'crop', 'pic')}<br>{html.escape(', '.join(f'{n} {p:.2f}' for n, p in labels))}</figure>"
            for c, labels in pic["crops"]
        )
        name = f"d{r['index']}"
        choice = (
            f"<label><input type='radio' name='{name}' value='accept' onchange='countDecisions()'> accept</label><br>"
            f"<label><input type='radio' name='{name}' value='reject' onchange='countDecisions()'> keep given</label>"
        )
        data = " ".join(
            f"data-{k}='{html.escape(str(v), quote=True)}'"
            for k, v in (("index", r["index"]), ("given", r["given"]), ("suggested", r["suggested"]),
                         ("p", r["suggested_p"]), ("flag", r["flag"]))
        )  # fmt: skip
        trs.append(
            f"<tr {data}><td>{r['rank']}</td><td>{img_tag(png(pic['image']), 'image ' + str(r['index']), 'pic')}<br>#{r['index']}</td>"
            f"<td><b>{html.escape(r['given'])}</b><br>p {r['self_confidence']:.2f}</td>"
            f"<td><b>{html.escape(r['suggested'])}</b><br>p {r['suggested_p']:.2f}</td>"
            f"<td class='reason'>{html.escape(r['flag'])}<br>{html.escape(r['reasons']) or '–'}</td>"
            f"<td>{html.escape(r['top3'])}</td><td class='crops'>{crops}</td><td>{choice}</td></tr>"
        )
    head = (
        "<tr><th>rank</th><th>image</th><th>given</th><th>suggested</th><th>why</th><th>top-3</th>"
        "<th>crops (top-3)</th><th>decision</th></tr>"
    )
    pairs = "".join(
        f"<li>{html.escape(p['given'])} → {html.escape(p['true'])}: about {p['images']:.0f}</li>"
        for p in summary.get("estimated_pairs", [])[:8]
    )
    body = (
        f"<h1>Label audit of {html.escape(run)}</h1><p>The {len(rows)} training images whose given label is least "
        f"supported ({html.escape(summary['scores'])} scores, ranked by {html.escape(summary['rank'])}); audit.csv "
        f"ranks all {summary['images']}. Confident learning estimates about {summary['estimated_issues']:.0f} wrong "
        f"labels, most often:</p><ul>{pairs}</ul>"
        "<p>Mark each row, then <button id='download' onclick='downloadReviewed()'>download reviewed CSV</button> "
        "(<span id='decided'>0</span> decided) and apply it with <code>label-refinery relabel reviewed.csv "
        "--reviewed --out fixes.csv</code>.</p>"
        f"<table>{head}{''.join(trs)}</table><script>{REVIEW_JS}</script>{hygiene_html(hygiene or [])}"
    )
    return page(f"label audit: {run}", body)


# ---- run report -------------------------------------------------------------------------------------


def _plots(metas: list[dict], analyses: list[dict | None]) -> dict[str, bytes]:
    from matplotlib.figure import Figure  # no pyplot: no global backend switch, no figure registry

    def subplots(*grid, figsize):
        fig = Figure(figsize=figsize)
        return fig, fig.subplots(*grid)

    gens = [m["generation"] for m in metas]
    out = {}
    fig, ax = subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(gens, [m["metrics"]["test_top1"] for m in metas], "o-", label="test")
    ax[0].plot(gens, [m["metrics"]["train_top1_clean"] for m in metas], "s-", label="train (clean)")
    ax[0].set(xlabel="generation", ylabel="top-1 %", xticks=gens, title="top-1")
    ax[0].legend()
    ax[1].bar(gens, [m["metrics"]["gap"] for m in metas])
    ax[1].set(xlabel="generation", ylabel="points", xticks=gens, title="train - test gap")
    out["top1_gap.png"] = png(fig)
    done = [a for a in analyses if a]
    if done:
        fig, ax = subplots(figsize=(4.5, 3.2))
        g = [a["generation"] for a in done]
        ax.plot(g, [a["entropy_crops"] for a in done], "o-", label="crops")
        ax.plot(g, [a["entropy_images"] for a in done], "s-", label="whole images")
        ax.set(xlabel="generation", ylabel="nats", xticks=g, title="refined-label entropy")
        ax.legend()
        out["entropy.png"] = png(fig)
        last = done[-1]
        names = sorted({p[k] for p in last["ambiguous_pairs"] for k in ("a", "b")}, key=last["classes"].index)
        idx = [last["classes"].index(n) for n in names]
        m = np.array(last["soft_confusion"])[np.ix_(idx, idx)]
        fig, ax = subplots(figsize=(1.0 + 0.6 * len(idx), 0.8 + 0.6 * len(idx)))
        ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v > 0.5 else "black")
        ax.set(
            xticks=range(len(names)), yticks=range(len(names)), title=f"soft confusion, generation {last['generation']}"
        )
        ax.set_xticklabels(names, rotation=45, ha="right")
        ax.set_yticklabels(names)
        ax.set_xlabel("refined label mass")
        ax.set_ylabel("given label")
        out["confusion.png"] = png(fig)
    return out


def _examples_html(folder: Path) -> str:
    """The paper-style figure: images and three of their crops with each generation's top-3."""
    path = folder / "analysis" / "examples.npz"
    if not path.is_file():
        return ""
    try:
        ex = dict(np.load(path, allow_pickle=False))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"analysis examples {path} are truncated or corrupt ({err}){_REANALYZE}") from None
    classes = read_json(folder / "analysis" / "examples.json", "analysis examples", _REANALYZE)["classes"]

    def labels(idx, prob) -> str:
        return "<br>".join(
            f"gen {g + 1}: "
            + ", ".join(f"{html.escape(classes[int(i)])} {float(p):.2f}" for i, p in zip(idx[g], prob[g]))
            for g in range(len(idx))
        )

    rows = []
    for e in range(len(ex["images"])):
        cells = [
            f"<figure>{img_tag(png(ex['images'][e]), 'image', 'pic')}<br><b>{html.escape(classes[int(ex['targets'][e])])}</b>"
            f"<br>{labels(ex['top_idx'][:, e], ex['top_prob'][:, e])}</figure>"
        ]
        for k in range(ex["crops"].shape[1]):
            cells.append(
                f"<figure>{img_tag(png(ex['crops'][e, k]), 'crop', 'pic')}<br>crop {k + 1}<br>"
                f"{labels(ex['crop_top_idx'][:, e, k], ex['crop_top_prob'][:, e, k])}</figure>"
            )
        rows.append("<div>" + "".join(cells) + "</div>")
    return "<h2>Images, crops and their refined labels</h2>" + "".join(rows)


COLUMNS = [
    ("generation", "gen"),
    ("model", "model"),
    ("train_top1_crops", "train top-1 (crops)"),
    ("train_top1_clean", "train top-1 (clean)"),
    ("test_top1", "test top-1"),
    ("test_top5", "test top-5"),
    ("gap", "gap"),
    ("entropy_crops", "entropy (crops)"),
    ("agreement_crops", "crop top-1 = label"),
    ("kl_from_previous_crops", "KL to previous"),
]


def report_run(run: str | Path) -> Path:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` into ``run`` from its files; returns the HTML path."""
    from .probe import generations

    folder = Path(run)
    gens = generations(folder)
    metas = [read_meta(g) for g in gens]  # the numbers, checked against each checkpoint's header
    analyses = [read_json(g / "analysis.json", "analysis", _REANALYZE) if (g / "analysis.json").is_file() else None for g in gens]
    rows = [
        {
            "generation": m["generation"],
            "model": m["model"],
            **m["metrics"],
            **{
                k: v
                for k, v in (a or {}).items()
                if k in ("entropy_crops", "agreement_crops", "kl_from_previous_crops")
            },
        }
        for m, a in zip(metas, analyses)
    ]
    for r in rows:
        if isinstance(r.get("agreement_crops"), float):
            r["agreement_crops"] *= 100
    figures = _plots(metas, analyses)
    (folder / "figures").mkdir(exist_ok=True)
    for name, data in figures.items():
        atomic_write(folder / "figures" / name, data)
    md = [
        f"# Label Refinery report: {md_text(folder.name)}",
        "",
        "| " + " | ".join(t for _, t in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    md += ["| " + " | ".join(_md_cell(r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    md += [""] + [f"![{n}](figures/{n})" for n in figures]
    hint = ""
    if not all(analyses):  # say which command fills the empty columns (report analyses first unless --no-analyze)
        hint = (f"{sum(a is None for a in analyses)} of {len(analyses)} generations have no label statistics (dashes above, "
                f"no label figures): `label-refinery analyze {folder}` fills them, or `label-refinery report` without --no-analyze.")
        md += ["", md_text(hint)]
    pairs = analyses[-1]["ambiguous_pairs"] if analyses[-1] else []
    pairs_text = "Most ambiguous class pairs (refined mass exchanged, last generation): " + "; ".join(
        f"{p['a']} / {p['b']} {p['mass']:.2f}" for p in pairs
    )
    if pairs:
        md += ["", md_text(pairs_text)]
    atomic_write(folder / "report.md", ("\n".join(md) + "\n").encode())
    body = (
        f"<h1>Label Refinery report: {html.escape(folder.name)}</h1>"
        + _table(rows, COLUMNS)
        + "".join(f"<figure>{img_tag(d, n)}</figure>" for n, d in figures.items())
        + (f"<p>{html.escape(pairs_text)}</p>" if pairs else "")
        + (f"<p class=\"hint\">{html.escape(hint)}</p>" if hint else "")
        + _examples_html(folder)
    )
    atomic_write(folder / "report.html", page(f"report: {folder.name}", body).encode())
    return folder / "report.html"


__all__ = ["audit_html", "report_run"]
