"""The model against llama.cpp's own outputs on the same file (tests/data, made by llama.cpp)."""
import numpy as np
import pytest

import pyllm


@pytest.fixture(scope="module")
def model(smollm2_path):
    with pyllm.Model(smollm2_path, n_ctx=512) as m:
        yield m


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def teacher_forced(model):
    z = np.load(pytest.importorskip("pathlib").Path(__file__).parent / "data" / "teacher_forced.npz")
    out = []
    for c in (0, 1):
        ids = z[f"chunk{c}_ids"]
        out.append((ids, log_softmax(model.logits(ids.tolist()).astype(np.float64)),
                    z[f"chunk{c}_top10_ids"], z[f"chunk{c}_top10_logprobs"]))
    return out


def test_teacher_forced_top1_agrees_with_llama_cpp(teacher_forced):
    agree = [float((lp.argmax(1) == top[:, 0]).mean()) for _, lp, top, _ in teacher_forced]
    print("top-1 agreement per chunk:", agree)
    assert np.mean(agree) >= 0.98


def test_teacher_forced_logprob_of_llama_top_token(teacher_forced):
    diffs = []
    for _, lp, top, top_lp in teacher_forced:
        diffs.append(np.abs(lp[np.arange(len(lp)), top[:, 0]] - top_lp[:, 0]))
    mean = float(np.concatenate(diffs).mean())
    print("mean |dlogp| of llama.cpp's top token:", mean)
    assert mean <= 0.05


def test_teacher_forced_top10_sets_overlap(teacher_forced):
    overlap = []
    for _, lp, top, _ in teacher_forced:
        ours = np.argsort(-lp, axis=1)[:, :10]
        overlap += [len(set(a) & set(b)) / 10 for a, b in zip(ours, top)]
    assert np.mean(overlap) >= 0.9


def test_greedy_continuations_match(model, fixture_json):
    greedy = fixture_json("greedy.json")
    same = 0
    for case in greedy:
        assert model.tokenize(case["prompt"], special=True) == case["prompt_ids"]
        out = list(model.generate_tokens(case["prompt_ids"], max_tokens=32,
                                         sampling=pyllm.SamplingParams(temperature=0)))
        want = case["continuation_ids"][:32]
        # llama.cpp stops at EOS; we stop at every end-of-generation token and exclude it.
        eos_cut = [t for t in want if t not in model.eog_ids()]
        n = min(len(want), 32)
        ok = out[:n] == want[:n] or out == eos_cut[:len(out)] and len(eos_cut) < n
        same += ok
        if not ok:
            print("differs:", case["prompt"][:40], out[:n], want[:n])
    print(f"greedy identical over 32 tokens: {same}/{len(greedy)}")
    assert same >= len(greedy) - 1
