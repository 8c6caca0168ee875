"""Shared test helpers for the analysis tests."""


def label_logprob_metric(ex):
    """Mean log-probability of ``ex``'s labels at its answer positions: a patching metric."""
    def metric(logits):
        return logits[:, ex.answer_pos].log_softmax(-1).gather(-1, ex.labels[..., None]).mean()
    return metric
