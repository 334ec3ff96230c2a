"""``QuestionAnsweringTrainer`` for ``run_qa.py``: a ``CrAMTrainer`` that answers in text and scores SQuAD."""

from __future__ import annotations

import time

from cram_hf.trainer import CrAMTrainer
from task_metrics import qa_metrics
from utils_qa import ANSWERS, references


class QuestionAnsweringTrainer(CrAMTrainer):
    """``CrAMTrainer`` whose ``evaluate``/``predict`` turn window logits into text answers and SQuAD metrics.

    Args (besides the Trainer's): ``eval_examples`` (the examples ``eval_dataset``'s windows come from) and
    ``post_process`` (``(examples, features, start_logits, end_logits) -> (predictions, nbest, diffs)``),
    ``version_2_with_negative`` for the metric. CrAM is off unless the ``args`` turn it on.
    """

    def __init__(self, *args, eval_examples=None, post_process=None, version_2_with_negative=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_examples = eval_examples
        self.post_process = post_process
        self.version_2_with_negative = version_2_with_negative
        self.last_predictions = None

    def _answer(self, features, examples, metric_key_prefix, ignore_keys=None):
        """Run the model over the windows; return (loop output, predictions, nbest, diffs, seconds)."""
        dataloader = (
            self.get_eval_dataloader(features)
            if metric_key_prefix != "test"
            else self.get_test_dataloader(features)
        )
        start = time.time()
        output = self.evaluation_loop(
            dataloader,
            description="Prediction",
            prediction_loss_only=False,
            ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )
        # Batches of different lengths come back padded with -100; post-processing only looks at positions
        # inside each window's offset mapping, so the padding is never read.
        start_logits, end_logits = output.predictions[:2]
        predictions, nbest, diffs = self.post_process(examples, features, start_logits, end_logits)
        return output, predictions, nbest, diffs, time.time() - start

    def _metrics(self, output, predictions, examples, seconds, prefix):
        metrics = {
            f"{prefix}_{k}": v
            for k, v in qa_metrics(predictions, references(examples), self.version_2_with_negative).items()
        }
        metrics.update({k: v for k, v in output.metrics.items() if k.startswith(prefix)})
        metrics[f"{prefix}_runtime"] = round(seconds, 4)
        metrics[f"{prefix}_samples_per_second"] = round(len(examples) / max(seconds, 1e-9), 3)
        return metrics

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval", eval_examples=None):
        features = self.eval_dataset if eval_dataset is None else eval_dataset
        examples = self.eval_examples if eval_examples is None else eval_examples
        output, predictions, nbest, diffs, seconds = self._answer(
            features, examples, metric_key_prefix, ignore_keys
        )
        self.last_predictions = (predictions, nbest, diffs)
        metrics = self._metrics(output, predictions, examples, seconds, metric_key_prefix)
        metrics["epoch"] = self.state.epoch
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def predict(self, predict_dataset, predict_examples, ignore_keys=None, metric_key_prefix="test"):
        """Answers for ``predict_examples``; metrics too when they have gold answers."""
        output, predictions, nbest, diffs, seconds = self._answer(
            predict_dataset, predict_examples, metric_key_prefix, ignore_keys
        )
        has_gold = (
            any(a["text"] for a in predict_examples[ANSWERS])
            if ANSWERS in predict_examples.column_names
            else False
        )
        metrics = (
            self._metrics(output, predictions, predict_examples, seconds, metric_key_prefix)
            if has_gold
            else {}
        )
        self.control = self.callback_handler.on_predict(self.args, self.state, self.control, metrics)
        return predictions, nbest, diffs, metrics
