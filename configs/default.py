"""Default: the embedded all-MiniLM-L6-v2, SST + Quora + STS, cross-encoder pair heads.

python train.py --config configs/default.py --workdir runs/default
python train.py --config configs/default.py:quick --workdir runs/quick   # a few minutes

The top-level fields' defaults are here; each section's (model, schedule, objective, optimizer)
are its dataclass's, written once there with a comment per field. Presets:
  quick   a few minutes on 256 records per task, for trying things out
  budget  the Results table's common budget (the default's 2,778 task batches); other
          recipes' budget presets fit their own epochs to it
"""

import ml_collections

from mtbert_jax.data.task_schedules import ScheduleConfig
from mtbert_jax.model.config import ModelConfig
from mtbert_jax.run.config import section_config
from mtbert_jax.training.objectives import ObjectiveConfig
from mtbert_jax.training.optimizer import OptimizerConfig


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # A Hugging Face BERT directory, or "default" for the embedded MiniLM.
    c.checkpoint = "default"
    # Task CSVs; empty: $MTBERT_DATA_DIR, else ../shared/data beside the project.
    c.data_dir = ""
    # Tokenized-data and XLA caches; empty: $MTBERT_CACHE_DIR, else ~/.cache/mtbert_jax.
    c.cache_dir = ""
    # Seed of parameter initialisation, data order, dropout and PCGrad's task orders.
    c.seed = 0
    # Tokens per sequence (a cross-encoder pair shares it); longer records are truncated.
    c.max_length = 128
    # Batches are padded to a multiple of this many tokens (one compiled step per length) ...
    c.bucket_step = 16
    # ... or packed: several examples per row of max_length tokens, each attending to itself only
    # (data/packing.py; README says when it pays).
    c.packing = True
    # "bfloat16": matmuls in bf16 with float32 accumulation; parameters, optimizer, LayerNorm,
    # softmax, GELU and losses in float32. "float32". "auto": bfloat16 where the hardware
    # multiplies it fast (a CPU with AVX-512 BF16 or AMX, a GPU, a TPU), float32 elsewhere; the
    # choice is printed, saved in the workdir's config.json and kept when the run resumes.
    c.compute_dtype = "auto"
    # Epochs of fine-tuning ...
    c.num_epochs = 3
    # ... then epochs with the encoder frozen (seed 003's extra training; 0: none).
    c.frozen_epochs = 0
    # Stop after this many steps (0: no limit); learning-rate schedules fit the cut.
    c.max_steps = 0
    # Train on only the first N records of each task (0: all), for quick runs.
    c.max_train_records = 0
    # Micro-batches per batch (gradient accumulation); schedule.batch_size must divide by it.
    c.accumulation_steps = 1
    # Records per batch when evaluating on dev after each epoch.
    c.eval_batch_size = 128
    # Write a metrics.jsonl record (mean losses, norms, learning rates) every N steps.
    c.log_every_steps = 50
    # Save a checkpoint every N steps (and at each epoch's end), for resuming.
    c.checkpoint_every_steps = 500
    # How many of the latest checkpoints to keep (best/ keeps the best by dev score apart).
    c.keep_checkpoints = 3
    # Also evaluate on dev every N steps (0: at each epoch's end only); best/ is chosen among
    # all evaluations, and each is saved with the loader's position (resumable).
    c.eval_every_steps = 0
    # Stop after this many dev evaluations without improving the best overall score by more
    # than early_stopping_min_delta (0: never stop early); the run saves and exits 0.
    c.early_stopping_patience = 0
    # The least gain in dev overall that counts as an improvement for early stopping.
    c.early_stopping_min_delta = 0.0
    # TensorBoard event files in WORKDIR/tensorboard (every metrics record, the config).
    c.tensorboard = True
    # Weights & Biases: "disabled", "offline" (a local run directory, nothing sent) or "online"
    # (needs `bash setup.sh --wandb` and a login); a resumed run continues the same W&B run.
    c.wandb = "disabled"
    # The W&B project (empty: "mtbert-jax") ...
    c.wandb_project = ""
    # ... and run name (empty: the workdir's name).
    c.wandb_name = ""
    # A jax.profiler trace of steps profile_start_step .. + profile_num_steps - 1 (counted from
    # 1), written to WORKDIR/profile; open it with xprof/TensorBoard or ui.perfetto.dev ...
    c.profile_start_step = 0
    # ... and how many steps it traces (0: no trace).
    c.profile_num_steps = 0

    # The sections' defaults are their dataclasses', each field commented there:
    # The model: tasks, pooling, pair heads, adapters, dropout (mtbert_jax/model/config.py).
    c.model = section_config(ModelConfig)
    # The multi-task schedule (mtbert_jax/data/task_schedules.py).
    c.schedule = section_config(ScheduleConfig)
    # Loss weight per task (all_tasks_scaled_batches uses its own).
    c.loss_weights = ml_collections.ConfigDict({"sst": 1.0, "quora": 1.0, "sts": 1.0})
    # What each task's loss is made of: STS's loss, uncertainty weighting, SMART, R-Drop, MNRL
    # (mtbert_jax/training/objectives.py).
    c.objective = section_config(ObjectiveConfig)
    # AdamW with linear warm-up and decay per parameter group, the task combiner (sum, mean,
    # PCGrad, GSE), clipping, weight averaging (mtbert_jax/training/optimizer.py).
    c.optimizer = section_config(OptimizerConfig)

    if preset == "quick":
        c.num_epochs = 1
        c.max_train_records = 256
        c.max_steps = 20
        c.log_every_steps = 5
        c.checkpoint_every_steps = 10
    elif preset not in ("", "budget"):
        raise ValueError(f"unknown preset {preset!r}: expected '', 'quick' or 'budget'")
    return c


def pooler_recipe_config(preset: str = "") -> ml_collections.ConfigDict:
    """The base of the recipe configs: the default with the reports' sentence vector (BERT's
    pooler), as the reports trained; the default mean-pools, as MiniLM was trained."""
    c = get_config(preset)
    c.model.pooling = "pooler"
    return c
