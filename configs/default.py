"""Default: the embedded all-MiniLM-L6-v2, SST + Quora + STS, cross-encoder pair heads.

python train.py --config configs/default.py --workdir runs/default
python train.py --config configs/default.py:quick --workdir runs/quick   # a few minutes

This file is the one source of the defaults (mtbert_jax/config.py reads it into typed
sections whose own defaults tests/test_configs.py keeps equal to these). Presets:
  quick   a few minutes on 256 records per task, for trying things out
  budget  the Results table's common budget (the default's 2,778 task batches); other
          recipes' budget presets fit their own epochs to it
"""

import ml_collections


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

    # The model (mtbert_jax/model/config.py).
    c.model = ml_collections.ConfigDict()
    # Tasks to train, each with its own head: sst, quora, sts, cfimdb.
    c.model.tasks = ("sst", "quora", "sts")
    # Sentence vector: pooler (BERT's tanh dense on [CLS]) | cls | mean | max. Mean: MiniLM was
    # trained mean-pooled, and it leads the pooler by 0.006 dev overall over 3 seeds (README).
    c.model.pooling = "mean"
    # Per pair task: cross | bi_sum | bi_concat | bi_concat_diff_prod | cosine | bi_cosine_concat
    # | bi_cosine (no parameters: STS 2.5 (1 + cos(u, v))); see mtbert_jax/model/config.py.
    c.model.pair_heads = ml_collections.ConfigDict({"quora": "cross", "sts": "cross"})
    # One dense + GELU layer shared by the pair heads (seed 003); needs equal bi-encoder heads.
    c.model.shared_pair_hidden = False
    # Task adapters: none | pals | low_rank | top_layer | low_rank_top_layer.
    c.model.adapter = "none"
    # d_s, the adapters' inner size (PALs: 204; seed 004's low-rank: 256).
    c.model.adapter_size = 204
    # Attention heads of the PAL layers (adapter_size must divide by it).
    c.model.adapter_heads = 6
    # Which encoder layers get adapters: all | top | bottom (half each).
    c.model.adapter_layers = "all"
    # Dropout before each head's linear layer.
    c.model.head_dropout = 0.1
    # The encoder's hidden and attention dropout (PAL attention takes the latter); unset: the
    # checkpoint's config.json (MiniLM: 0.1).
    c.model.encoder_dropout = ml_collections.config_dict.placeholder(float)
    # Pair tasks predict the mean of the head's outputs for both sentence orders (Quora's
    # logit, STS's score), so that a pair's prediction never depends on its order; evaluation
    # of pair tasks costs twice as much.
    c.model.symmetric_pairs = False

    # The multi-task schedule (mtbert_jax/data/task_schedules.py).
    c.schedule = ml_collections.ConfigDict()
    # sequential | round_robin | all_tasks_scaled_batches | all_tasks_until_largest |
    # all_tasks_until_smallest | proportional | sqrt | annealed (data/task_schedules.py;
    # method1..method3, seed 001's names for the all_tasks_* kinds, are read as aliases).
    c.schedule.kind = "sqrt"
    # Records per task batch (every device of every process gets an equal share).
    c.schedule.batch_size = 32
    # N_t -> w_t N_t when planning (0 removes a task); weights of untrained tasks are ignored.
    c.schedule.task_weights = ml_collections.ConfigDict({"sst": 1.0, "quora": 1.0, "sts": 1.0})
    # A smaller task is oversampled up to this factor (never past the largest task).
    c.schedule.oversample_max = 1.0
    # Steps per epoch times this factor (seed 002: 3x the smallest task's epoch).
    c.schedule.iterations_multiplier = 1.0
    # Curriculum: epochs per stage, 0 for none (seed 004: Quora first).
    c.schedule.curriculum_epochs = 0
    # largest_first: those epochs train the largest task alone, then all; one_by_one: tasks join
    # largest first, one more every curriculum_epochs epochs (seed 004's gradual introduction).
    c.schedule.curriculum = "largest_first"
    # all_tasks_until_smallest starts every task's pass afresh each epoch, discarding the rest (seed 001); True
    # continues each task where the last epoch stopped, so that over epochs all data is seen.
    c.schedule.carry_over_passes = False
    # Each pass of a cross-encoded pair task (Quora, STS) takes a random half of its pairs with
    # the two sentences swapped: the relations are symmetric, a cross-encoder is not.
    c.schedule.swap_pairs = False

    # Loss weight per task (all_tasks_scaled_batches uses its own).
    c.loss_weights = ml_collections.ConfigDict({"sst": 1.0, "quora": 1.0, "sts": 1.0})

    # What each task's loss is made of (mtbert_jax/training/objectives.py).
    c.objective = ml_collections.ConfigDict()
    # STS: "mse" on the head's score, or "cosine_embedding" on the two sentence vectors (seed 002;
    # needs model.pair_heads.sts = "bi_cosine", which scores STS from those vectors).
    c.objective.sts_loss = "mse"
    # Learned uncertainty weighting of the task losses (Kendall et al. 2018).
    c.objective.uncertainty_weighting = False
    # SMART (mtbert_jax/training/smart.py).
    c.objective.smart = ml_collections.ConfigDict()
    # The tasks SMART is on for, e.g. ("sst", "sts").
    c.objective.smart.tasks = ()
    # Weight of the adversarial smoothness term (the paper tries 1, 3, 5).
    c.objective.smart.lambda_s = 1.0
    # Weight of the Bregman proximal term against the moving-average teacher (0: no teacher).
    c.objective.smart.mu = 1.0
    # Standard deviation of the initial perturbation of the embedding outputs.
    c.objective.smart.sigma = 1e-5
    # Step size of the one ascent step.
    c.objective.smart.eta = 1e-3
    # Infinity-norm radius the perturbation is projected to.
    c.objective.smart.eps = 1e-5
    # R-Drop (mtbert_jax/training/rdrop.py): each batch twice under other dropout masks, the
    # mean of the two losses plus alpha/4 times their predictions' symmetric divergence.
    c.objective.rdrop = ml_collections.ConfigDict()
    # The tasks it is on for, e.g. ("sst",); each costs that task a second forward and backward.
    c.objective.rdrop.tasks = ()
    # Weight of the divergence (the paper tries 0.1, 0.5, 1 on GLUE).
    c.objective.rdrop.alpha = 1.0
    # Multiple negatives ranking loss (in-batch negatives, scale 20, on positive pairs).
    c.objective.mnrl = ml_collections.ConfigDict()
    # The pair tasks it is on for (they need bi-encoder heads), e.g. ("quora", "sts").
    c.objective.mnrl.tasks = ()
    # Added to the task's own loss with this weight ...
    c.objective.mnrl.weight = 1.0
    # ... or instead of it (the task then trains on its positive pairs only).
    c.objective.mnrl.only = False
    # STS pairs with similarity >= this are positives.
    c.objective.mnrl.sts_threshold = 4.0

    # The optimizer (mtbert_jax/training/optimizer.py): AdamW with linear warm-up and decay.
    c.optimizer = ml_collections.ConfigDict()
    # Peak learning rate of the encoder (bert/...).
    c.optimizer.encoder_lr = 5e-5
    # Peak learning rate of the heads and adapters.
    c.optimizer.task_lr = 5e-4
    # Task-specific top transformer layers (seed 004's adapter); unset: task_lr. At task_lr
    # seed 004's STS head collapsed; 5e-5 fixed it (docs/results.md).
    c.optimizer.top_layer_lr = ml_collections.config_dict.placeholder(float)
    # Layer-wise learning-rate decay: the encoder's rate times this per layer down from the top
    # (the embeddings get decay^num_layers; 1: one rate for the whole encoder).
    c.optimizer.layer_lr_decay = 1.0
    # Fraction of the steps spent warming up from 0 to the peak rates.
    c.optimizer.warmup_fraction = 0.1
    # AdamW's decoupled weight decay (not on LayerNorm and biases).
    c.optimizer.weight_decay = 0.01
    # Clip the combined gradient to this global norm (0: no clipping).
    c.optimizer.max_grad_norm = 1.0
    # Train only the task parts (heads, adapters) for the whole run.
    c.optimizer.freeze_encoder = False
    # How per-task gradients combine: sum | mean | pcgrad | gse (seed 002's "gradient surgery
    # experiment": a PCGrad update, then an update with the summed loss's gradient recomputed at
    # the updated parameters).
    c.optimizer.combiner = "sum"
    # PCGrad's reduction of the projected shared gradients: sum | mean (task-specific parameters
    # keep their task's gradient either way). Unset: sum (the paper) for pcgrad, mean for gse.
    c.optimizer.pcgrad_reduction = ml_collections.config_dict.placeholder(str)
    # Weight averaging: dev evaluation, the best checkpoint and predictions use an exponential
    # moving average of the parameters with this decay per step (0: the parameters themselves).
    c.optimizer.ema_decay = 0.0

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
