"""What ``cram-hf sweep`` offers — tasks, their metrics, default levels, file types — as plain constants,
importable without torch so that ``cram-hf --help`` does not pay for it."""

TASKS = ("mlm", "classification")
METRICS = {"mlm": ("accuracy", "loss", "perplexity"), "classification": ("accuracy", "f1", "loss")}
HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "loss": False, "perplexity": False}
DEFAULT_LEVELS = ("0", "0.5", "0.6", "0.7", "0.8", "0.9", "2:4")
TEXT_EXTENSIONS = (".txt", ".text", ".raw")
TABLE_EXTENSIONS = (".csv", ".json", ".jsonl")
