"""Default: the embedded all-MiniLM-L6-v2, SST + Quora + STS, cross-encoder pair heads.

python train.py --config configs/default.py --workdir runs/default
python train.py --config configs/default.py:quick --workdir runs/quick   # a few minutes
"""

import ml_collections


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # A Hugging Face BERT directory, or "default" for the embedded MiniLM.
    c.checkpoint = "default"
    # Task CSVs; empty: $MTBERT_DATA_DIR, else ../shared/data beside the project.
    c.data_dir = ""
    # Tokenized-data cache; empty: $MTBERT_CACHE_DIR, else ~/.cache/mtbert_jax.
    c.cache_dir = ""
    # Seed of parameters init, data order and dropout.
    c.seed = 0
    # Tokens per sequence (pairs share it); batches pad to multiples of bucket_step.
    c.max_length = 128
    c.bucket_step = 16
    # "float32", or "bfloat16" matmuls with float32 parameters.
    c.compute_dtype = "float32"
    # Epochs of fine-tuning, then epochs with the encoder frozen (seed 003's extra training).
    c.num_epochs = 3
    c.frozen_epochs = 0
    # Stop after this many updates (0: no limit), for quick runs.
    c.max_steps = 0
    # Use only the first N training records of each task (0: all), for quick runs.
    c.max_train_records = 0
    # Micro-batches per batch (gradient accumulation); batch_size must divide by it.
    c.accumulation_steps = 1
    c.eval_batch_size = 128
    c.log_every_steps = 50
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 3

    # The model (mtbert_jax/model_config.py).
    c.model = ml_collections.ConfigDict()
    c.model.tasks = ("sst", "quora", "sts")
    c.model.pooling = "pooler"  # pooler | cls | mean | max
    c.model.pair_heads = ml_collections.ConfigDict({"quora": "cross", "sts": "cross"})
    c.model.shared_pair_hidden = False
    c.model.adapter = "none"  # none | pals | low_rank | top_layer | low_rank_top_layer
    c.model.adapter_size = 204
    c.model.adapter_heads = 6
    c.model.adapter_layers = "all"  # all | top | bottom
    c.model.head_dropout = 0.1

    # The multi-task schedule (mtbert_jax/schedules.py).
    c.schedule = ml_collections.ConfigDict()
    c.schedule.kind = "sqrt"
    c.schedule.batch_size = 32
    c.schedule.task_weights = ml_collections.ConfigDict({"sst": 1.0, "quora": 1.0, "sts": 1.0})
    c.schedule.oversample_max = 1.0
    c.schedule.iterations_multiplier = 1.0
    c.schedule.curriculum_epochs = 0

    # Loss weights per task (Method 1 schedules use their own).
    c.loss_weights = ml_collections.ConfigDict({"sst": 1.0, "quora": 1.0, "sts": 1.0})

    # SMART (mtbert_jax/smart.py), on for the tasks listed.
    c.smart = ml_collections.ConfigDict()
    c.smart.tasks = ()
    c.smart.lambda_s = 1.0
    c.smart.mu = 1.0
    c.smart.sigma = 1e-5
    c.smart.eta = 1e-3
    c.smart.eps = 1e-5
    # Multiple negatives ranking loss for these pair tasks (bi-encoder heads), added with a
    # weight or alone, on positive pairs (STS: similarity >= sts_threshold).
    c.mnrl = ml_collections.ConfigDict()
    c.mnrl.tasks = ()
    c.mnrl.weight = 1.0
    c.mnrl.only = False
    c.mnrl.sts_threshold = 4.0
    # "mse", or "cosine_embedding" (seed 002; bi-encoder STS head).
    c.sts_loss = "mse"
    # Learned uncertainty weighting of the task losses (Kendall et al. 2018).
    c.uncertainty_weighting = False

    # The optimizer (mtbert_jax/optimizer.py).
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.encoder_lr = 5e-5
    c.optimizer.task_lr = 5e-4
    # Task-specific top transformer layers (seed 004's adapter); unset: task_lr. At task_lr
    # seed 004's STS head collapsed; 5e-5 fixed it (README, Results).
    c.optimizer.top_layer_lr = ml_collections.config_dict.placeholder(float)
    c.optimizer.warmup_fraction = 0.1
    c.optimizer.weight_decay = 0.01
    c.optimizer.max_grad_norm = 1.0
    c.optimizer.freeze_encoder = False
    c.optimizer.combiner = "sum"  # sum | mean | pcgrad | gse
    c.optimizer.pcgrad_reduction = "sum"

    if preset == "quick":
        c.num_epochs = 1
        c.max_train_records = 256
        c.max_steps = 20
        c.log_every_steps = 5
        c.checkpoint_every_steps = 10
    elif preset:
        raise ValueError(f"unknown preset {preset!r}: expected '' or 'quick'")
    return c
