"""The server's scheduler: requests that arrive together are prefilled together, and one bad
request in such a group fails alone."""

import asyncio

import torch

from chatbot.serve import engine
from chatbot.generate.batching import BatchDecoder
from chatbot.generate.prompt import Prompt
from chatbot.serve.engine import Engine, Job
from chatbot.options import SamplingOptions
from chatbot.generate.sampling import generate_tokens
from tests.conftest import tiny_config

EOS = 3


def prompt(ids: list[int]) -> Prompt:
    return Prompt(turns=[], input_ids=ids, token_type_ids=None, reply_type_id=None)


def test_prefill_groups_hold_at_most_the_token_budget_padding_included(monkeypatch):
    monkeypatch.setattr(engine, "PREFILL_TOKENS", 100)
    jobs = [Job(prompt([0] * n), SamplingOptions(), [None], None) for n in (30, 20, 40, 90, 10, 100, 60)]
    groups = engine._prefill_groups(jobs)
    # 30+20 pad to 2 x 30; a third of 40 would be 3 x 40 = 120 > 100
    assert [[len(j.prompt.input_ids) for j in g] for g in groups] == [[30, 20], [40], [90], [10], [100], [60]]


def test_jobs_admitted_together_are_prefilled_together_and_a_bad_one_fails_alone(tokenizer):
    torch.manual_seed(0)
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel(tiny_config(tokenizer)).eval()
    decoder = BatchDecoder(model, eos_id=EOS)
    calls = []
    add_many = decoder.add_many
    decoder.add_many = lambda requests: calls.append(len(requests)) or add_many(requests)
    options = SamplingOptions(temperature=0, max_new_tokens=5, min_new_tokens=5)
    good = ([2, 7, 8, 3], [2, 9, 3])

    async def run() -> list:
        loop = asyncio.get_running_loop()
        jobs = [Job(prompt(ids), options, [None], loop) for ids in (good[0], list(range(70)), good[1])]
        eng = Engine(decoder, max_batch=4, max_pending=4)
        with eng._cond:  # held, so that the engine admits all three at once
            for job in jobs:
                eng.submit(job)
        outputs = []
        for job in jobs:
            tokens = []
            while not isinstance(event := await asyncio.wait_for(job.events.get(), 10), Exception):
                tokens += [token for _, token, _ in event]
                if event[0][2]:
                    break
            outputs.append(event if isinstance(event, Exception) else tokens)
        eng.close()
        return outputs

    first, bad, second = asyncio.run(run())
    assert calls == [3, 1, 1, 1]  # all three together; the long prompt fails it, so each alone
    assert isinstance(bad, ValueError) and "exceeds the model's n_positions" in str(bad)
    for ids, out in zip(good, (first, second)):
        fields = {k: v for k, v in vars(options).items() if k != "num_candidates"}
        assert out == [step[0] for step in generate_tokens(model, ids, eos_id=EOS, **fields)]
