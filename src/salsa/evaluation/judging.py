"""Sampling every policy on the same prompts with the same seeds, and scoring the answers with the judges
(the task's gold judge and the reward model) and, on request, the KL to reference models."""

from __future__ import annotations

import copy
import itertools
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from salsa import runtime
from salsa.config import REFERENCES, EvalConfig
from salsa.data import Prompt, prompt_text
from salsa.evaluation.ifeval import METRICS as IFEVAL_METRICS
from salsa.evaluation.ifeval import IFEvalJudge
from salsa.generation import Generation, distinct_rows, generate, prefill
from salsa.models import load_causal_lm
from salsa.policy import response_forward, sequence_kl
from salsa.scoring import reward_function
from salsa.seeding import derive_seed
from salsa.standard_sets import SETS, load_records, mt_bench_second_turns
from salsa.tasks import BUILTIN_TASKS

SECOND_TURN = "_turn_2"  # the split of a split's MT-Bench second turns: in_distribution_turn_2, ...


def _first_turn_sources(config: EvalConfig) -> dict[str, str | None]:
    return {"in_distribution": config.prompts, "out_of_distribution": config.ood_prompts}


def second_turn_splits(config: EvalConfig) -> dict[str, str]:
    """The splits whose MT-Bench second turns are sampled too (eval.mt_bench_turns 2): split -> its second turn's."""
    if config.mt_bench_turns == 1:
        return {}
    return {split: split + SECOND_TURN for split, source in _first_turn_sources(config).items() if source == "mt-bench"}


def prompt_sources(config: EvalConfig) -> dict[str, str | None]:
    """Where each split's prompts come from: a file, a hub dataset or a standard set's name (an MT-Bench second
    turn's split: mt-bench)."""
    sources = _first_turn_sources(config)
    return sources | {second: sources[split] for split, second in second_turn_splits(config).items()}


def turn_of(split: str) -> int:
    """Which MT-Bench turn a split's prompts are: 2 for a second turn's split, else 1."""
    return 2 if split.endswith(SECOND_TURN) else 1


def second_turn_prompts(first_turn: list[dict]) -> dict[tuple[int, int], Prompt]:
    """MT-Bench's second turn of each of one model's first-turn answer rows, by (question, sample): the first
    question, that sample's own first answer, the follow-up question."""
    answers: dict[int, dict[int, str]] = {}
    for row in first_turn:
        answers.setdefault(row["sample"], {})[row["index"]] = row["response"]
    return {
        (i, s): conversation
        for s, by_question in answers.items()
        for i, conversation in enumerate(mt_bench_second_turns([by_question[i] for i in range(len(by_question))]))
    }


def comparison_pairs(config: EvalConfig, with_references: bool = False) -> list[tuple[str, str]]:
    """The (A, B) pairs to compare: the configured ones (checked by EvalConfig.check), else every pair of policies.
    A policy against a set's reference answers (B `references`) is compared by the LLM judge only: with it only on
    request."""
    if config.comparisons is None:
        return list(itertools.combinations(config.policies, 2))
    pairs = [tuple(item.split(":", 1)) for item in config.comparisons]
    return [(a, b) for a, b in pairs if with_references or b != REFERENCES]


class Judges:
    """The gold judge, the reward model and IFEval's rules, each optional, scoring (prompt, response) pairs."""

    def __init__(self, task: str | None, reward_model: str | None, device: torch.device):
        self.gold_fn: Callable[[str, str], float] | None = None
        if task:
            self.gold_fn = BUILTIN_TASKS[task].gold_score
        self.reward = None
        if reward_model:
            self.reward = reward_function(reward_model, device)
        self.ifeval = None

    def for_prompts(self, source: str | None) -> Judges:
        """The judges of a split whose prompts come from `source`: a standard set is judged by the reward model and,
        for IFEval, by its rules; never by the task's gold judge, which knows only the task's prompts."""
        if source not in SETS:
            return self
        judges = copy.copy(self)
        judges.gold_fn = None
        if source == "ifeval":
            judges.ifeval = IFEvalJudge(load_records("ifeval")[0])
        return judges

    @property
    def names(self) -> list[str]:
        named = [name for name, judge in (("gold", self.gold_fn), ("reward", self.reward)) if judge is not None]
        return named + (list(IFEVAL_METRICS) if self.ifeval is not None else [])

    def score(self, prompts: list[Prompt], responses: list[str]) -> dict[str, list[float]]:
        scores = {}
        if self.gold_fn is not None:
            scores["gold"] = [self.gold_fn(prompt_text(p), r) for p, r in zip(prompts, responses, strict=True)]
        if self.reward is not None:
            scores["reward"] = self.reward(prompts, responses).tolist()
        if self.ifeval is not None:
            scores.update(self.ifeval.score(prompts, responses))
        return scores


@dataclass
class Answers:
    """One model's scored responses to one split's prompts, and the generations of this process's batches, kept so
    that its KL to one more reference costs a forward pass, not another draw."""

    rows: list[dict]  # every process's, in (prompt, sample) order
    generations: list[tuple[list[tuple[int, int]], Generation]]  # this process's batches: (prompt, sample) pairs
    jobs: list[tuple[int, int]]


# A split's prompts: one per prompt index, answered by every sample, or one per (prompt, sample): MT-Bench's second
# turns, each sample's conversation holding its own first answer.
Prompts = list[Prompt] | dict[tuple[int, int], Prompt]


@torch.no_grad()
def draw_answers(
    model: torch.nn.Module,
    tokenizer,
    prompts: Prompts,
    split: str,
    config: EvalConfig,
    judges: Judges,
    on_batch: Callable[[int], None] | None = None,
    samples: range | None = None,
) -> Answers:
    """Responses to every prompt (sample numbers `samples`, default one per prompt; the keys of `prompts` when it
    gives each (prompt, sample) its own), in (prompt, sample) order, with their judges' scores.

    Sample s of prompt i of `split` is drawn with seed (seed, split, i, s) by every policy (common random numbers).
    Under several processes each answers its share of the batches one process would make and every process
    receives all rows (one process's rows but for rare tokens at a rounding boundary: see `generation.generate`).
    """
    if not isinstance(prompts, dict):
        prompts = {(i, s): prompts[i] for i in range(len(prompts)) for s in samples or range(1)}
    jobs = sorted(prompts)
    rows: dict[tuple[int, int], dict] = {}
    generations = []
    for batch_jobs in runtime.my_batches(jobs, config.batch_size):
        batch = [prompts[job] for job in batch_jobs]
        sample: Generation = generate(
            model, tokenizer, batch, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
            seeds=[derive_seed(config.seed, "eval", split, i, s) for i, s in batch_jobs], with_logprobs=True,
        )  # fmt: skip
        generations.append((batch_jobs, sample))
        scores = judges.score(batch, sample.responses)
        lengths = sample.mask.sum(1).tolist()
        for j, ((i, s), response) in enumerate(zip(batch_jobs, sample.responses, strict=True)):
            rows[(i, s)] = {"index": i, "sample": s, "prompt": batch[j], "response": response, "length": lengths[j]}
            rows[(i, s)].update({key: values[j] for key, values in scores.items()})
        if on_batch:
            on_batch(len(batch) * runtime.world_size())
    everything = runtime.gather_dict(rows)
    return Answers([everything[job] for job in jobs], generations, jobs)


def _bytes(state: tuple) -> int:
    """Memory of a kept prefill: its cache's tensors (keys and values, or a hybrid layer's states) and outputs."""
    cache, logits, hidden = state
    tensors = [logits, hidden, *(t for layer in cache.layers for t in vars(layer).values())]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _budget(model: torch.nn.Module) -> int:
    """What a reference may keep: its own size, and on a GPU at most a quarter of the memory free now."""
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    device = next(model.parameters()).device
    return min(size, torch.cuda.mem_get_info(device)[0] // 4) if device.type == "cuda" else size


class PromptStates:
    """The keys and values of the prompts each reference model has read, by model and prompt batch. Every model of
    an evaluation answers the same prompts in the same batches, so a reference reads each batch once however many
    models' KL to it are measured (a job's policy and snapshots, the soup's ingredients). Each distinct prompt row
    is kept once (not once per sample), up to the reference's own size in memory (on a GPU, a quarter of what is
    free), after which it reads them again; a model's entries go when it does."""

    def __init__(self) -> None:
        self._kept: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def prefill(self, model: torch.nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple:
        """`generation.prefill(model, ids, attention_mask, hidden=True)`, its cache a copy the caller may extend."""
        kept = self._kept.setdefault(model, [])
        found = next((s for i, m, s in kept if torch.equal(i, ids) and torch.equal(m, attention_mask)), None)
        if found is None:
            first, inverse = distinct_rows(ids, attention_mask)
            found = (prefill(model, ids[first], attention_mask[first], hidden=True), inverse)
            if sum(_bytes(s) for _, _, (s, _) in kept) + _bytes(found[0]) <= _budget(model):
                kept.append((ids, attention_mask, found))
        (cache, logits, hidden), inverse = found
        cache = copy.deepcopy(cache)  # the caller's forward extends it; the kept one stays the prompts'
        cache.batch_select_indices(inverse)
        return cache, logits[inverse], hidden[inverse]


@torch.no_grad()
def kl_to(
    answers: Answers, reference: torch.nn.Module, config: EvalConfig, prompt_states: PromptStates | None = None
) -> list[float]:
    """KL of the answering model to `reference` on each of its answers (k1 summed over the response), in the order
    of `answers.rows`; `prompt_states` keeps the reference's reading of the prompts for the next model's answers."""
    kls = {}
    for batch_jobs, sample in answers.generations:
        args = (sample.sequences, sample.attention_mask, sample.prompt_length, config.temperature)
        state = None
        if prompt_states is not None and sample.sequences.shape[1] - sample.prompt_length > 1:
            prompt = slice(0, sample.prompt_length)
            state = prompt_states.prefill(reference, sample.sequences[:, prompt], sample.attention_mask[:, prompt])
        ref_logprobs = response_forward(reference, *args, prompt_state=state).logprobs
        kls.update(zip(batch_jobs, sequence_kl(sample.logprobs, ref_logprobs, sample.mask).tolist(), strict=True))
    everything = runtime.gather_dict(kls)
    return [everything[job] for job in answers.jobs]


def sample_and_score(
    model: torch.nn.Module,
    tokenizer,
    prompts: Prompts,
    split: str,
    config: EvalConfig,
    judges: Judges,
    kl_references: dict[str, torch.nn.Module] | None = None,
    on_batch: Callable[[int], None] | None = None,
    samples: range | None = None,
    prompt_states: PromptStates | None = None,
) -> list[dict]:
    """`draw_answers`' rows with, given references, each row's KL to each (`kl_<name>`; 0 to the model itself)."""
    answers = draw_answers(model, tokenizer, prompts, split, config, judges, on_batch, samples)
    kls = {
        f"kl_{name}": [0.0] * len(answers.rows)
        if reference is model
        else kl_to(answers, reference, config, prompt_states)
        for name, reference in (kl_references or {}).items()
    }
    return [{**row, **{key: values[j] for key, values in kls.items()}} for j, row in enumerate(answers.rows)]


def frozen(path: str, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A model for scoring only: on `device`, in `dtype` (the compute precision), eval mode, without gradients."""
    return load_causal_lm(path, dtype).to(device).eval().requires_grad_(False)
