"""Preference tuning (training.method dpo / orpo): dataset layouts, the losses, the reference
log-probabilities, training runs in every embeddings mode, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from headtune.core import events as ev
from headtune.core.data.examples import collator_for, prepare
from headtune.core.data.reading import load_pairs
from headtune.core.errors import DataError, PlanError
from headtune.core.plan import plan_from_dict
from headtune.core.testing import PREFERENCE_ROWS, plan_dict, write_jsonl
from headtune.core.training import preference
from headtune.core.training.job import TrainingJob, resume_plan

LOG2 = math.log(2)


def make_plan(tmp_path, model_dir, data_file, name="run", method="dpo", **sections):
    training = {"method": method, "max_steps": 3, "learning_rate": 5e-3, **sections.pop("training", {})}
    return plan_from_dict(plan_dict(model_dir, data_file, tmp_path / name, training=training, **sections))


@pytest.fixture
def pref_file(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", PREFERENCE_ROWS)


# -- layouts -----------------------------------------------------------------------------------

USER = {"role": "user", "content": "Name a colour."}


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "Name a colour.", "chosen": "Red is one.", "rejected": "no"},
        # Anthropic HH style: two whole conversations sharing their prompt turns.
        {
            "chosen": [USER, {"role": "assistant", "content": "Red is one."}],
            "rejected": [USER, {"role": "assistant", "content": "no"}],
        },
        # UltraFeedback binarized: the prompt as text beside the two conversations.
        {
            "prompt": "Name a colour.",
            "chosen": [USER, {"role": "assistant", "content": "Red is one."}],
            "rejected": [USER, {"role": "assistant", "content": "no"}],
        },
        # The replies alone as one-turn lists, the prompt in its own column.
        {
            "prompt": "Name a colour.",
            "chosen": [{"role": "assistant", "content": "Red is one."}],
            "rejected": [{"role": "assistant", "content": "no"}],
        },
        {"question": "Name a colour.", "response_j": "Red is one.", "response_k": "no"},
    ],
    ids=["flat", "conversations", "ultrafeedback", "replies-only", "stack-exchange"],
)
def test_each_layout_gives_the_same_pair(tmp_path, row):
    (pair,) = load_pairs(str(write_jsonl(tmp_path / "p.jsonl", [row])))
    assert pair.prompt == [USER] and pair.chosen == "Red is one." and pair.rejected == "no"


def test_multi_turn_prompt_keeps_earlier_turns(tmp_path):
    turns = [USER, {"role": "assistant", "content": "Red."}, {"role": "user", "content": "Another?"}]
    row = {
        "chosen": [*turns, {"role": "assistant", "content": "Blue is another."}],
        "rejected": [*turns, {"role": "assistant", "content": "no"}],
    }
    (pair,) = load_pairs(str(write_jsonl(tmp_path / "p.jsonl", [row])))
    assert pair.prompt == turns and pair.chosen == "Blue is another."


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"prompt": "x", "chosen": "a"}, r"p.jsonl, line 3: the column 'rejected' is missing"),
        ({"prompt": "x", "chosen": "a", "rejected": 5}, r"p.jsonl, line 3: .*'rejected'"),
        (
            {
                "chosen": [USER, {"role": "assistant", "content": "a"}],
                "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}],
            },
            r"p.jsonl, line 3: 'chosen' and 'rejected' differ before their last turn",
        ),
        ({"chosen": "a", "rejected": "b"}, r"p.jsonl, line 3: the column 'prompt' is missing"),
    ],
)
def test_bad_row_names_its_line(tmp_path, bad, message):
    data = write_jsonl(tmp_path / "p.jsonl", PREFERENCE_ROWS[:2] + [bad])
    with pytest.raises(DataError, match=message) as info:
        load_pairs(str(data))
    assert info.value.line == 3


def test_method_and_data_must_agree(tmp_path, tokenizer_dir, tiny_untied, alpaca_file, pref_file):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    sft = plan_from_dict(plan_dict(tiny_untied, pref_file, tmp_path / "a"))
    with pytest.raises(DataError, match="holds preference pairs.*training.method dpo or orpo"):
        prepare(sft.data, tok, 0)
    with pytest.raises(DataError, match=r"data.jsonl, line 1: preference tuning .* needs rows with prompt/chosen"):
        prepare(sft.data.__class__(path=str(alpaca_file)), tok, 0, "dpo")
    with pytest.raises(PlanError, match="data.packing"):
        make_plan(tmp_path, tiny_untied, pref_file, data={"packing": True})


def test_only_the_last_reply_is_trained(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    turns = [USER, {"role": "assistant", "content": "Red."}, {"role": "user", "content": "Another?"}]
    row = {
        "chosen": [*turns, {"role": "assistant", "content": "Blue is another."}],
        "rejected": [*turns, {"role": "assistant", "content": "no"}],
    }
    spec = plan_from_dict(plan_dict(tmp_path, write_jsonl(tmp_path / "p.jsonl", [row]), tmp_path / "r")).data
    spec.val_fraction = 0.0
    (f,) = prepare(spec, tok, 0, "dpo").train
    for which, reply in (("chosen", "Blue is another."), ("rejected", "no")):
        trained = [t for t in f[f"{which}_labels"] if t != -100]
        assert tok.decode(trained) == reply + "<|im_end|>\n"  # as SFT labels a reply


# -- the losses --------------------------------------------------------------------------------


def test_dpo_loss_by_hand():
    # beta 0.5; chosen gained 1 nat over the reference, rejected lost 1: margin 0.5 + 0.5 = 1.
    out = preference.dpo_loss(
        torch.tensor([-3.0, -4.0]),
        torch.tensor([-5.0, -4.0]),
        torch.tensor([-4.0, -4.0]),
        torch.tensor([-4.0, -4.0]),
        0.5,
    )
    assert out.margin.tolist() == [1.0, 0.0]
    expected = (math.log(1 + math.exp(-1.0)) + LOG2) / 2
    assert float(out.loss) == pytest.approx(expected, rel=1e-6)
    assert out.chosen.tolist() == [0.5, 0.0] and out.rejected.tolist() == [-0.5, 0.0]


def test_orpo_loss_by_hand():
    # chosen: 2 tokens, sum -1.0 -> mean -0.5; rejected: 4 tokens, sum -8 -> mean -2.
    out = preference.orpo_loss(
        torch.tensor([-1.0]), torch.tensor([-8.0]), torch.tensor([2.0]), torch.tensor([4.0]), 0.1
    )

    def log_odds(x):
        p = math.exp(x)
        return math.log(p / (1 - p))

    ratio = log_odds(-0.5) - log_odds(-2.0)
    expected = 0.5 + 0.1 * math.log(1 + math.exp(-ratio))
    assert float(out.margin[0]) == pytest.approx(ratio, rel=1e-5)
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("batching", ["padded", "padding_free"])
def test_chunked_log_probs_equal_the_full_logits(tmp_path, tokenizer_dir, tiny_untied, pref_file, batching):
    """Sequence log-probabilities through the chunked path (chunks of 16 tokens) equal those from
    the model's own full logits, in both batch layouts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from headtune.core.plan.memory_options import resolve

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    plan = make_plan(tmp_path, tiny_untied, pref_file)
    data = prepare(plan.data, tok, 0, "dpo")
    model = AutoModelForCausalLM.from_pretrained(tiny_untied, dtype=torch.float32)
    batch = collator_for(batching, tok.pad_token_id, pairs=True)(data.train[:3])
    eff = resolve(plan, "cpu", tied=False)
    chunked = eff.__class__(**{**eff.__dict__, "loss_chunk": 16})
    with torch.no_grad():
        a, n_a = preference.sequence_log_probs(model, model.get_output_embeddings(), batch, chunked)
        b, n_b = preference.sequence_log_probs(model, model.get_output_embeddings(), batch, None)
        # By hand for the first row: log-softmax of a padded forward of that row alone.
        row = data.train[0]
        ids = torch.tensor([row["chosen_input_ids"]])
        labels = torch.tensor(row["chosen_labels"])[1:]
        lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        mask = labels != -100
        by_hand = lp[mask].gather(1, labels[mask][:, None]).sum()
    assert a.shape == (6,) and torch.allclose(a, b, atol=1e-4)
    assert float(a[0]) == pytest.approx(float(by_hand), abs=1e-4)
    assert n_a.tolist() == n_b.tolist() and n_a[0] == int(mask.sum())


# -- training ----------------------------------------------------------------------------------


def steps_and_evals(seen):
    return [e for e in seen if isinstance(e, ev.Step)], [e for e in seen if isinstance(e, ev.Eval)]


def test_dpo_starts_at_log2_and_learns_the_preference(tmp_path, tiny_untied, pref_file):
    seen: list = []
    plan = make_plan(tmp_path, tiny_untied, pref_file, training={"max_steps": 6, "eval_every": 6})
    result = TrainingJob(plan, sinks=[seen.append]).run()
    assert isinstance(result, ev.Finished)
    steps, evals = steps_and_evals(seen)
    # The reference is the starting model: at the first step every reward is 0 and the loss log 2.
    first = steps[0]
    assert first.reward_margin == pytest.approx(0.0, abs=1e-4) and first.loss == pytest.approx(LOG2, abs=1e-4)
    assert evals[0].step == 0 and evals[0].eval_loss == pytest.approx(LOG2, abs=1e-4)
    # Training separates the replies: the margin grows and every pair ends ranked right.
    assert steps[-1].reward_margin > 0.05 and steps[-1].reward_accuracy == 1.0
    assert steps[-1].reward_chosen > steps[-1].reward_rejected
    assert evals[-1].eval_reward_accuracy == 1.0 and evals[-1].eval_loss < LOG2 - 0.02
    stored = json.loads((tmp_path / "run" / "reference_logps.json").read_text())
    assert len(stored["train"]) == 22 and len(stored["val"]) == 2 and stored["train"][0][0] < 0
    # The events read back with the reward figures.
    back = [e for e in ev.read_events(tmp_path / "run" / "events.jsonl") if isinstance(e, ev.Step)]
    assert back[-1].reward_accuracy == steps[-1].reward_accuracy


@pytest.mark.parametrize("mode", ["full", "tokens", "lora"])
def test_dpo_in_every_embeddings_mode_with_a_new_token(tmp_path, tiny_tied, mode):
    """With the embedding and head trained and a new token in the chosen replies, the reference is
    still the starting model (the new row's starting values included): the first margin is 0;
    training raises it."""
    rows = [dict(r, chosen=r["chosen"] + " <|ok|>") for r in PREFERENCE_ROWS[:8]]
    dtype = "bfloat16" if mode == "lora" else "float32"  # the head applied under 16-bit autocast too
    data = write_jsonl(tmp_path / "p.jsonl", rows)
    embeddings = {"train_embeddings": True, "train_lm_head": True, "mode": mode, "new_tokens": ["<|ok|>"]}
    if mode == "tokens":
        embeddings["token_ids"] = [5, 6]
    seen: list = []
    plan = make_plan(tmp_path, tiny_tied, data, embeddings=embeddings, training={"max_steps": 3})
    plan.model.dtype = dtype
    TrainingJob(plan, sinks=[seen.append]).run()
    steps, _ = steps_and_evals(seen)
    assert steps[0].reward_margin == pytest.approx(0.0, abs=1e-4 if dtype == "float32" else 0.05)
    assert steps[-1].reward_margin > steps[0].reward_margin
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()


def test_resume_reuses_the_stored_reference(tmp_path, tiny_untied, pref_file, monkeypatch):
    plan = make_plan(tmp_path, tiny_untied, pref_file, training={"max_steps": 2, "save_every": 2})
    TrainingJob(plan).run()
    stored = (tmp_path / "run" / "reference_logps.json").read_text()

    def refuse(*args, **kwargs):
        raise AssertionError("the reference was computed again")

    monkeypatch.setattr(preference, "compute_reference", refuse)
    seen: list = []
    resumed = resume_plan(tmp_path / "run", ["training.max_steps=4"])
    result = TrainingJob(resumed, sinks=[seen.append], resume=True).run()
    assert isinstance(result, ev.Finished) and result.step == 4
    assert any("read from reference_logps.json" in getattr(e, "message", "") for e in seen)
    assert (tmp_path / "run" / "reference_logps.json").read_text() == stored
    steps, _ = steps_and_evals(seen)
    assert [s.step for s in steps] == [3, 4] and all(s.reward_margin is not None for s in steps)
    # The finished run exports like any other: the merged model equals the adapter model.
    from transformers import AutoModelForCausalLM

    from headtune.core.tools.export import export_run
    from headtune.core.training.trained import load_trained

    export_run(tmp_path / "run", "merged", tmp_path / "merged", dtype="float32")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    tuned, _tok, _plan = load_trained(tmp_path / "run", device="cpu")
    ids = torch.tensor([[1, 5, 9, 30, 40]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, tuned(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


def test_reference_for_other_pairs_is_not_reused(tmp_path, tiny_untied, pref_file):
    from transformers import AutoTokenizer

    plan = make_plan(tmp_path, tiny_untied, pref_file)
    tok = AutoTokenizer.from_pretrained(tiny_untied)
    data = prepare(plan.data, tok, 0, "dpo")
    preference.attach(data.train, [[-1.0, -2.0]] * len(data.train))
    preference.attach(data.val, [[-1.0, -2.0]] * len(data.val))
    path = tmp_path / "ref.json"
    preference.save_reference(path, data.train, data.val)
    again = prepare(plan.data, tok, 0, "dpo")
    assert preference.load_reference(path, again.train, again.val) and again.train[0]["ref_rejected"] == -2.0
    other = prepare(plan.data, tok, 1, "dpo")  # another split: other pairs in train
    assert not preference.load_reference(path, other.train, other.val)


def test_orpo_runs_without_a_reference(tmp_path, tiny_untied, pref_file):
    seen: list = []
    plan = make_plan(tmp_path, tiny_untied, pref_file, method="orpo", training={"max_steps": 4, "eval_every": 4})
    result = TrainingJob(plan, sinks=[seen.append]).run()
    assert isinstance(result, ev.Finished)
    assert not (tmp_path / "run" / "reference_logps.json").exists()
    steps, evals = steps_and_evals(seen)
    # ORPO's rewards are mean token log-probabilities; the loss is the chosen replies' NLL plus
    # lambda x a softplus term, so above the chosen reward's magnitude.
    assert all(s.reward_chosen < 0 and s.loss > -s.reward_chosen for s in steps)
    assert steps[-1].reward_chosen > steps[0].reward_chosen  # the chosen replies became likelier
    assert evals[-1].eval_reward_accuracy is not None and evals[-1].eval_loss < evals[0].eval_loss


def test_stop_during_the_reference_pass(tmp_path, tiny_untied, pref_file):
    plan = make_plan(tmp_path, tiny_untied, pref_file)
    job = TrainingJob(plan)

    def sink(e):
        if isinstance(e, ev.Log) and e.message.startswith("Computing the reference"):
            job.request_stop()

    job.sinks.append(sink)
    result = job.run()
    assert isinstance(result, ev.Stopped) and result.step == 0
    assert not (tmp_path / "run" / "reference_logps.json").exists()
    assert not (tmp_path / "run" / "adapter").exists()


def test_command_line_prints_the_rewards(capsys):
    from headtune.core.cli import _print_event

    common = dict(total_steps=2, learning_rate=1e-3, grad_norm=None, tokens_per_s=1.0, epoch=0.0)
    _print_event(ev.Step(step=1, loss=0.7, **common), quiet=False)
    _print_event(ev.Step(step=2, loss=0.6, reward_margin=0.25, reward_accuracy=0.75, **common), quiet=False)
    _print_event(ev.Eval(step=2, eval_loss=0.5, eval_reward_accuracy=1.0), quiet=False)
    sft, dpo, evaluation = capsys.readouterr().out.splitlines()
    assert "reward" not in sft
    assert "reward_margin +0.2500  reward_accuracy 0.75" in dpo and "eval_reward_accuracy 1.00" in evaluation
