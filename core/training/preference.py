"""Preference tuning on the job's own loop: DPO and ORPO losses, sequence log-probabilities,
and DPO's reference log-probabilities.

Why not TRL's ``DPOTrainer``: the run keeps everything the job already does (events, stop and
resume, crash-safe checkpoints, the chunked loss, every embeddings mode, padding-free batches,
data-parallel runs) because the only change is the loss inside ``HeadtuneTrainer.compute_loss``.

A batch holds ``n`` pairs as ``2n`` rows (chosen rows first, ``core.data.examples.PairCollator``),
so chosen and rejected go through the model once, together. A reply's log-probability is the sum
of its labelled tokens' log-probabilities; with the chunked loss they come from
``core.training.lean.label_log_probs``, a chunk of tokens at a time, never the full logits.

DPO's reference is the *starting* model: the PEFT model before its first step (LoRA's B matrices
are zero; embedding/head copies, token rows and new tokens' rows hold their starting values).
Switching the adapter off later would not give it back once embedding rows or a head copy have
trained, so the reference log-probabilities of every pair (train and validation) are computed
once, in one no-grad pass before the first step, and stored in the run folder
(``core.runfolder.REFERENCE``); a resume reads them back. Training then holds no second model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..data.reading import IGNORE_INDEX

METHODS = ("dpo", "orpo")


@dataclass(frozen=True)
class Preference:
    """What the trainer needs to know of the plan's method."""

    method: str  # dpo or orpo
    beta: float = 0.1  # dpo
    lam: float = 0.1  # orpo

    @classmethod
    def of(cls, training) -> Preference | None:
        if training.method not in METHODS:
            return None
        return cls(training.method, training.pref_beta, training.orpo_lambda)


def sequence_log_probs(trainer_model, head, inputs: dict, eff):
    """(sum of log-probabilities of each row's labelled tokens, labelled tokens per row), each a
    float32 vector over the batch's rows; ``inputs`` as ``PairCollator`` makes them."""
    import torch

    from . import lean

    inputs = dict(inputs)
    labels = inputs.pop("labels")
    rows = inputs.pop("pair_rows")
    inputs.pop("ref_chosen", None)
    inputs.pop("ref_rejected", None)
    if "position_ids" in inputs:  # padding-free: positions keep the rows apart (see compute_loss)
        inputs.pop("attention_mask", None)
    n_rows = int(rows.max()) + 1
    if eff is None or eff.loss == "standard":
        logits = trainer_model(**inputs).logits[:, :-1]
        shift = labels[:, 1:].reshape(-1)
        keep = (shift != IGNORE_INDEX).nonzero().squeeze(1)
        flat = logits.reshape(-1, logits.shape[-1]).index_select(0, keep).float()
        token_lp = torch.log_softmax(flat, dim=-1).gather(1, shift.index_select(0, keep)[:, None]).squeeze(1)
    else:
        with lean.head_bypassed(head):
            hidden = trainer_model(**inputs).logits
        token_lp, keep = lean.label_log_probs(head, hidden, labels, eff.loss_chunk)
    row_of = rows[:, 1:].reshape(-1).index_select(0, keep)
    sums = torch.zeros(n_rows, dtype=torch.float32, device=token_lp.device).index_add(0, row_of, token_lp.float())
    counts = torch.zeros(n_rows, dtype=torch.float32, device=token_lp.device).index_add(
        0, row_of, torch.ones_like(token_lp, dtype=torch.float32)
    )
    return sums, counts


@dataclass
class PairLoss:
    """A batch's loss (mean over its pairs) and per-pair figures for the events."""

    loss: object  # a scalar tensor
    chosen: object  # per-pair reward of the chosen reply (DPO: beta x its log-ratio; ORPO: mean log-prob)
    rejected: object
    margin: object  # per-pair (DPO: chosen - rejected reward; ORPO: the log-odds ratio)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float) -> PairLoss:
    """DPO (Rafailov et al. 2023): -log sigmoid(beta x ((pi_c - ref_c) - (pi_r - ref_r))), per pair,
    from the replies' summed log-probabilities."""
    import torch.nn.functional as F

    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    margin = chosen - rejected
    return PairLoss(-F.logsigmoid(margin).mean(), chosen.detach(), rejected.detach(), margin.detach())


def orpo_loss(sum_chosen, sum_rejected, n_chosen, n_rejected, lam: float) -> PairLoss:
    """ORPO (Hong et al. 2024): the chosen replies' negative log-likelihood (mean over their tokens)
    plus lam x -log sigmoid(log-odds(chosen) - log-odds(rejected)), the odds from each reply's
    length-normalised log-probability p: log-odds = log p - log(1 - p)."""
    import torch
    import torch.nn.functional as F

    mean_c = sum_chosen / n_chosen.clamp(min=1)
    mean_r = sum_rejected / n_rejected.clamp(min=1)

    def log_odds(mean_lp):
        # log(1 - exp(x)) for x < 0; x == 0 (a certain reply) would be -inf.
        x = mean_lp.clamp(max=-1e-6)
        return x - torch.log(-torch.expm1(x))

    ratio = log_odds(mean_c) - log_odds(mean_r)
    nll = -sum_chosen.sum() / n_chosen.sum().clamp(min=1)
    loss = nll - lam * F.logsigmoid(ratio).mean()
    return PairLoss(loss, mean_c.detach(), mean_r.detach(), ratio.detach())


def pair_loss(pref: Preference, sums, counts, inputs: dict) -> PairLoss:
    """The method's loss of a batch whose rows' log-probabilities are ``sums``."""
    n = sums.shape[0] // 2
    if pref.method == "dpo":
        if "ref_chosen" not in inputs:
            raise RuntimeError("a DPO batch without reference log-probabilities")
        ref_c = inputs["ref_chosen"].to(sums.device, sums.dtype)
        ref_r = inputs["ref_rejected"].to(sums.device, sums.dtype)
        return dpo_loss(sums[:n], sums[n:], ref_c, ref_r, pref.beta)
    return orpo_loss(sums[:n], sums[n:], counts[:n], counts[n:], pref.lam)


# -- the reference ---------------------------------------------------------------------------


def fingerprint(features: list[dict]) -> str:
    """A hash of the pairs' tokens and labels: stored reference values belong to exactly these."""
    h = hashlib.sha256()
    for f in features:
        for key in ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"):
            h.update(json.dumps(f[key]).encode())
    return h.hexdigest()


def compute_reference(
    model, head, features: list[dict], collator, batch_size: int, device, eff, stop=None
) -> list | None:
    """[[chosen, rejected] log-probability] of each pair under ``model`` as it is now (eval mode,
    no gradients), in the same batches and code path as training; None when ``stop()`` turns
    true between two batches."""
    import torch

    was_training = model.training
    model.eval()
    out: list = []
    try:
        with torch.no_grad():
            for s in range(0, len(features), batch_size):
                if stop is not None and stop():
                    return None
                part = features[s : s + batch_size]
                batch = {k: v.to(device) for k, v in collator(part).items()}
                sums, _counts = sequence_log_probs(model, head, batch, eff)
                n = len(part)
                out += [[float(sums[i]), float(sums[n + i])] for i in range(n)]
    finally:
        model.train(was_training)
    return out


def attach(features: list[dict], values: list) -> None:
    for f, (c, r) in zip(features, values):
        f["ref_chosen"], f["ref_rejected"] = c, r


def load_reference(path: Path, train: list[dict], val: list[dict]) -> bool:
    """Attach stored reference values when ``path`` holds them for exactly these pairs."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if saved.get("train_fingerprint") != fingerprint(train) or saved.get("val_fingerprint") != fingerprint(val):
        return False
    values = saved.get("train", []), saved.get("val", [])
    if len(values[0]) != len(train) or len(values[1]) != len(val):
        return False
    if not all(math.isfinite(x) for part in values for pair in part for x in pair):
        return False
    attach(train, values[0])
    attach(val, values[1])
    return True


def save_reference(path: Path, train: list[dict], val: list[dict]) -> None:
    """Written whole or not at all (a temporary name, then renamed)."""
    data = {
        "train_fingerprint": fingerprint(train),
        "val_fingerprint": fingerprint(val),
        "train": [[f["ref_chosen"], f["ref_rejected"]] for f in train],
        "val": [[f["ref_chosen"], f["ref_rejected"]] for f in val],
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)
