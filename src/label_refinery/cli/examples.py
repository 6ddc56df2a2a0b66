"""The examples shown under each subcommand's ``--help`` (kept apart from the parsing in cli.py)."""

EXAMPLES = {
    "chain": """examples:
  # the embedded default: ground truth, then one self-refinement, on Fashion-MNIST (2 CPU cores: ~11 min).
  # Two generations by default: in our studies further self-refinements lost accuracy (docs/results.md)
  label-refinery chain --dataset fashion-mnist --model cnn-small --generations 2 --epochs 10

  # where refinement paid most in our studies (make demo; docs/results.md): many related classes with
  # few images each, which generation 1 over-fits (fashion-pairs: 100 classes, 30 images per class);
  # --val-split holds out images to choose settings on. Over 5 seeds generation 2 gained ~1 test point.
  label-refinery chain --dataset fashion-pairs --train-subset 3000 --val-split 5000 --epochs 100 --eval-every 25

  # a refinery ensemble: several trained models averaged in probability label generation 1
  label-refinery chain --refinery runs/a/gen1 --refinery runs/b/gen1 --refinery runs/c/gen1 --generations 1

  # function matching: mixup labelled after mixing; refined generations get a longer schedule
  label-refinery chain --mix mixup --epochs 30 --refined-epochs 60

  # a bigger refinery for a small student: generation 1 is a ResNet on ground truth,
  # generation 2 a cnn-small refined by it, generation 3 refined by generation 2
  label-refinery chain --models resnet-cifar cnn-small cnn-small --generations 3 --epochs 10

  # start the chain from a refinery trained earlier, with settings from a YAML file
  label-refinery chain --config my.yaml --refinery runs/resnet/gen1 --generations 2

  # adversarial jittering in every refined generation: half of each batch moved by 2/255 against the refinery
  label-refinery chain --generations 3 --jitter --jitter-eps 2/255

  # several processes (GPUs, or --device cpu for gloo on CPU); --batch-size stays the global batch
  torchrun --nproc_per_node=8 -m label_refinery chain --config configs/imagenet/resnet50.yaml --dataset imagefolder:/data/imagenet

  Re-running the same command resumes from the last checkpoint (epoch ends, or every --save-every
  steps): finished generations are skipped.""",
    "train": """examples:
  label-refinery train --dataset digits --epochs 5 --out runs/digits-gen1            # ground truth
  label-refinery train --dataset digits --epochs 5 --refinery runs/digits-gen1 --out runs/digits-gen2
  label-refinery train --dataset imagefolder:/data/imagenet --model timm:resnet18 --image-size 224 \\
      --crop-scale 0.08 1 --batch-size 256 --lr 0.1 --schedule step --milestones 140 170 --epochs 200""",
    "bake": """examples:
  # bake generation 1's labels for the crops generation 2 will see (same --seed and crop flags as its train command)
  label-refinery bake --refinery runs/g1 --dataset fashion-mnist --seed 1 --epochs 10 --top-k 5 --out runs/g1-store
  label-refinery train --dataset fashion-mnist --seed 1 --epochs 10 --labels runs/g1-store --refinery runs/g1 --out runs/g2

  label-refinery bake --refinery runs/g1 --epochs 10 --estimate --out runs/g1-store   # size only
  label-refinery bake --refinery runs/g1 --static --out runs/g1-static                # one label per image

  An interrupted bake resumes when re-run; manifest.json is written last.""",
    "analyze": """examples:
  label-refinery analyze runs/fmnist                   # writes runs/fmnist/genK/analysis.json and runs/fmnist/analysis/
  label-refinery analyze runs/fmnist --images 10000 --crops 8""",
    "audit": """examples:
  label-refinery audit runs/fmnist --folds 5           # held-out: 5 fold models never trained on the images they score
  label-refinery audit runs/fmnist --folds 5 --fold-epochs 30   # fold models trained 3x the default 10 epochs: more flips found
  label-refinery audit runs/fmnist --folds 5 --fold-seeds 3   # each fold an ensemble of 3 seeds (15 trainings)
  label-refinery audit runs/fmnist                     # in-sample: the chain's own generations (no training; weaker)
  label-refinery audit runs/fmnist --html-rows 300 --rank normalized_margin --out audits/fmnist

  Writes audit.csv (every image, most suspicious first: suggested label, flag, reason), audit.html (the
  top rows, accept/reject per row, "download reviewed CSV"), probs.npy ([N, C], cleanlab's pred_probs)
  and audit-summary.json (confident learning's estimate of wrong labels per class pair); they appear
  together. --out RUN is allowed (those names only); a folder of your own needs --force.""",
    "relabel": """examples:
  label-refinery relabel runs/fmnist/audit/audit.csv --top 200 --out fixes.csv   # the first 200 'wrong' rows
  label-refinery relabel reviewed.csv --reviewed --out fixes.csv                 # the rows accepted in audit.html
  label-refinery relabel review-fo/samples.json --reviewed --out fixes.csv       # FiftyOne: tagged accept, or a label field
  label-refinery relabel project-1-export.json --reviewed --out fixes.csv        # Label Studio's JSON (or CSV) export
  label-refinery chain --label-overrides fixes.csv --out runs/fmnist-fixed        # retrain on the fixed labels

  Review before you retrain. Measured (bench/audit_relabel.py, Fashion-MNIST 6,000 images, 5 seeds),
  --top k unreviewed also replaces 66-326 correct labels and gained -0.10 to +0.54 test points; the same
  k rows reviewed gained +0.26 to +2.04 (docs/analysis.md, "Does relabelling pay").

  An existing --out file (perhaps fixes edited by hand) is replaced only with --force.""",
    "export": """examples:
  label-refinery export runs/fmnist --format npz       # ids, targets, probs [N, C] (cleanlab's pred_probs), top-k
  label-refinery export runs/fmnist --format csv --generation 2 --top-k 3
  label-refinery export runs/fmnist --format hf --out fmnist-refined   # datasets.load_from_disk("fmnist-refined")
  label-refinery export runs/g1-store --format parquet                  # a label store: one row per (epoch, image)
  label-refinery export runs/fmnist --format fiftyone --out review-fo   # the audit: fo.Dataset.from_dir(..., LegacyFiftyOneDataset)
  label-refinery export runs/fmnist --format label-studio --out review-ls  # tasks.json + config.xml, suggestions pre-annotated""",
    "report": """examples:
  label-refinery report runs/fmnist                    # report.md, report.html, figures/ (run `analyze` first for label plots)""",
    "experiment": """examples:
  label-refinery experiment configs/claims/fashion-mnist.yaml                 # every arm, every seed; resumes
  label-refinery experiment configs/claims/fashion-mnist.yaml --seeds 2       # one seed (e.g. a second process)
  label-refinery experiment configs/claims/fashion-mnist.yaml --arms self big # some arms only
  label-refinery experiment configs/claims/fashion-mnist.yaml --table         # rebuild results.md only

  The file names a base config, arms (changes of the base; `refinery: ARM/genK` refines with another
  arm's generation of the same seed) and seeds; see label_refinery/study/spec.py. Results:
  OUT/results.md (mean ± std over seeds, paired differences) and OUT/results.json.""",
    "verify": """examples:
  label-refinery verify runs/fmnist                        # every checkpoint and label store under the folder
  label-refinery verify runs/g1-store                      # a label store: every epoch (training checks those it reads)
  label-refinery verify runs/fmnist/gen2/model.safetensors # one checkpoint (every load checks it too)

  Checkpoints carry a SHA-256 of their tensors in their header, label stores one per epoch and array in
  manifest.json; artefacts written before these digests are checked as far as they can be, and say so.""",
    "evaluate": """examples:
  label-refinery evaluate runs/chain/gen2                  # test split of the checkpoint's dataset
  label-refinery evaluate runs/chain/gen2 --split train    # un-augmented training images""",
}
