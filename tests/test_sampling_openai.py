"""Tests of the "openai" sampling backend.

Against a real `vllm serve` on CPU (one module-scoped server with an API key, serving a
toy-world model; it takes ~1 min to start) for what the model's answers show: order,
seeds, greedy, over-long prompts, the key. Against a small scripted HTTP server in a
thread for what a healthy server never does: 429s, 503s, timeouts, refusals, odd
finish reasons, and for the exact request each sample sends.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest
from openai_server import Scripted

from fusechat3.recipe import resolve_model
from fusechat3.sampling import GenParams, get_sampler
from fusechat3.sampling.base import derive_seed

os.environ.setdefault("HF_HUB_OFFLINE", "1")

KEY_ENV = "FUSECHAT3_TEST_OPENAI_KEY"
KEY = "sk-test-7f3a9c"
SERVED_NAME = "toy-math"
MAX_MODEL_LEN = 512
QUESTIONS = [
    "Ann has 3 apples. Ann finds 4 more. How many apples does Ann have now?",
    "Bob has 5 boxes. Each box holds 6 pens. How many pens does Bob have?",
    "Cat shares 12 cards equally among 3 friends. How many cards does each friend get?",
    "Dan has 8 eggs. Dan finds 9 more. How many eggs does Dan have now?",
]
CONVERSATIONS = [[{"role": "user", "content": q}] for q in QUESTIONS]
TOO_LONG = [{"role": "user", "content": "apples " * 600}]  # > 512 tokens in any tokenizer of the toy world
SAMPLED = GenParams(n=4, temperature=1.5, top_p=1.0, max_tokens=24)  # hot: the toy model's samples differ
GREEDY = GenParams(n=2, temperature=0, max_tokens=24)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ real vllm serve


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `vllm serve` of toyworld:mistral-math on CPU that requires the key; yields its base URL."""
    model = resolve_model("toyworld:mistral-math")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "VLLM_LOGGING_LEVEL": "WARNING",
        "VLLM_API_KEY": KEY,  # `--api-key`, kept off the command line
        # The engine inside the server process: starts ~30 s sooner on 2 cores than a
        # separate engine process (one vLLM import instead of two); same HTTP server.
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }
    # Not the `vllm serve` console script: its --version lookup fails in a `vllm-cpu`
    # install (no "vllm" distribution metadata); this is the same server's entry point.
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.launchers.api_server.entry",
        "--model",
        model,
        "--served-model-name",
        SERVED_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        str(MAX_MODEL_LEN),
        "--seed",
        "0",
        # Seeded requests and chunked prefill crash vLLM on CPU (see sampling/vllm.py).
        "--no-enable-chunked-prefill",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"vllm serve did not start (exit {proc.poll()}):\n{log_path.read_text()[-4000:]}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's whole process group (engine core, workers), then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY_ENV


def _texts(results):
    return [[c.text for c in completions] for completions in results]


@pytest.mark.integration
def test_samples_in_input_order_and_seeded(server, key_env):
    sampler = get_sampler("openai", SERVED_NAME, base_url=server, api_key_env=key_env, max_concurrency=8)
    try:
        seeds = [101, 202, 303, 404]
        ticks = []
        sampled = sampler.generate(CONVERSATIONS, SAMPLED, seeds=seeds, progress=ticks.append)
        assert [len(c) for c in sampled] == [SAMPLED.n] * len(QUESTIONS)
        assert sum(ticks) == len(QUESTIONS)
        for completions in sampled:
            for c in completions:
                assert c.finish_reason in ("stop", "length") and c.error is None
                assert c.num_tokens > 0 and c.text
        assert len({tuple(texts) for texts in _texts(sampled)}) == len(QUESTIONS)  # a shift would show

        # Each prompt alone, with its seed, gives what it got in the batch (its own answers, in
        # its place); the reversed batch with the reversed seeds too: seeds decide, not positions.
        for conversation, seed, completions in zip(CONVERSATIONS, seeds, sampled, strict=True):
            assert _texts(sampler.generate([conversation], SAMPLED, seeds=[seed])) == _texts([completions])
        again = sampler.generate(CONVERSATIONS[::-1], SAMPLED, seeds=seeds[::-1])[::-1]
        assert _texts(again) == _texts(sampled)
        # Samples of one prompt differ (per-sample seeds), and other seeds give other samples.
        assert len({c.text for completions in sampled for c in completions}) > len(QUESTIONS)
        other = sampler.generate(CONVERSATIONS, SAMPLED, seeds=[5, 6, 7, 8])
        assert _texts(other) != _texts(sampled)

        greedy = sampler.generate(CONVERSATIONS, GREEDY)
        assert all(len({c.text for c in completions}) == 1 for completions in greedy)
        assert _texts(sampler.generate(CONVERSATIONS[::-1], GREEDY))[::-1] == _texts(greedy)
        assert sampler.stats["finish_error"] == 0 and sampler.stats["retries"] == 0
        assert sampler.stats["requests"] == 4 + 4 * 1 + 4 + 4 + 4 + 4
    finally:
        sampler.close()


@pytest.mark.integration
def test_over_long_prompt_between_others(server, key_env, caplog):
    batch = [CONVERSATIONS[0], TOO_LONG, CONVERSATIONS[1]]
    model_dir = resolve_model("toyworld:mistral-math")
    # With the tokenizer: found locally (the context length comes from the server's model list).
    local = get_sampler("openai", SERVED_NAME, base_url=server, api_key_env=key_env, tokenizer=model_dir)
    try:
        assert local.max_model_len == MAX_MODEL_LEN
        results = local.generate(batch, GREEDY)
        assert local.stats["prompt_too_long"] == 1
        assert not any(k.endswith("_http_400") for k in local.stats)  # never sent
        expected = _texts(local.generate([CONVERSATIONS[0], CONVERSATIONS[1]], GREEDY))
    finally:
        local.close()
    # Without it: the server's 400 says so.
    remote = get_sampler("openai", SERVED_NAME, base_url=server, api_key_env=key_env)
    try:
        with caplog.at_level(logging.WARNING, logger="fusechat3"):
            served = remote.generate(batch, GREEDY)
        assert remote.stats["prompt_too_long"] == 1 and remote.stats["prompt_too_long_http_400"] == 1
        assert "maximum context length" in caplog.text
    finally:
        remote.close()
    for got in (results, served):
        assert [c.error for c in got[1]] == ["prompt_too_long"] * GREEDY.n
        assert all(c.finish_reason == "error" and c.text == "" for c in got[1])
        assert _texts([got[0], got[2]]) == expected  # the neighbours keep their own answers


@pytest.mark.integration
def test_api_key(server, key_env, monkeypatch, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    for name in ("openai", "httpx", "httpx2"):  # as verbose as a user may make them
        caplog.set_level(logging.DEBUG, logger=name)
    sampler = get_sampler("openai", SERVED_NAME, base_url=server, api_key_env=key_env)
    try:
        assert sampler.generate(CONVERSATIONS[:1], GREEDY)[0][0].finish_reason == "stop"
    finally:
        sampler.close()
    monkeypatch.setenv("WRONG_KEY", "sk-not-it")
    with pytest.raises(ValueError, match=r"refused the API key \(HTTP 401\).*\$WRONG_KEY") as err:
        get_sampler("openai", SERVED_NAME, base_url=server, api_key_env="WRONG_KEY")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="the API key variable NO_SUCH_KEY_VAR .* is not set: export") as err:
        get_sampler("openai", SERVED_NAME, base_url=server, api_key_env="NO_SUCH_KEY_VAR")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"does not serve model 'other'; it serves \['toy-math'\]"):
        get_sampler("openai", "other", base_url=server, api_key_env=key_env)
    out = capsys.readouterr()
    assert caplog.records  # the check below looked at real log output
    for text in (caplog.text, out.out, out.err):
        assert KEY not in text and "sk-not-it" not in text


# ------------------------------------------------------------------ scripted server


@pytest.fixture
def scripted() -> Iterator[type[Scripted]]:
    servers: list[Scripted] = []

    def start(script: list | None = None) -> Scripted:
        servers.append(Scripted(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_options_and_unreachable_server(scripted):
    with pytest.raises(ValueError, match=r"unknown openai option\(s\) \['temprature'\]; allowed: \[.*'base_url'"):
        get_sampler("openai", "m", temprature=0.5)
    with pytest.raises(ValueError, match="max_concurrency must be an integer >= 1"):
        get_sampler("openai", "m", max_concurrency=0)
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    with pytest.raises(ValueError, match=r"cannot reach http://127\.0\.0\.1:\d+/v1 \(.+\): start the server") as err:
        get_sampler("openai", "m", base_url=url)
    assert "\n" not in str(err.value)
    fake = scripted()
    with pytest.raises(ValueError, match=r"does not serve model 'm'; it serves \['fake'\]"):
        get_sampler("openai", "m", base_url=fake.url)


def test_requests_order_refusals_and_finish_reasons(scripted, caplog):
    fake = scripted()
    sampler = get_sampler(
        "openai", "fake", chat_template="{{ messages }}", base_url=fake.url, api_key_env=None, max_concurrency=4
    )
    try:
        prompts = [f"prompt {i}" for i in range(12)] + ["please REFUSE", "FILTER me", "REFUSE again"]
        params = GenParams(n=3, temperature=0.7, top_p=0.9, top_k=20, repetition_penalty=1.05, max_tokens=9, stop=["#"])
        ticks = []
        with caplog.at_level(logging.WARNING, logger="fusechat3"):
            results = sampler.generate(
                [[{"role": "user", "content": p}] for p in prompts], params, progress=ticks.append
            )
        assert sum(ticks) == len(prompts)
        for p, completions in zip(prompts[:12], results, strict=False):
            assert [c.text.rsplit(" ", 1)[0] for c in completions] == [f"echo {p}"] * 3  # in input order
            assert all(c.finish_reason == "stop" and c.num_tokens == 3 for c in completions)
            assert len({c.text for c in completions}) == 3  # one seed per sample
        assert [c.error for c in results[12] + results[14]] == ["rejected"] * 6
        assert [(c.finish_reason, c.error) for c in results[13]] == [("error", "finish_reason_content_filter")] * 3
        assert sampler.stats["rejected"] == 2 and sampler.stats["rejected_http_422"] == 6
        assert caplog.text.count("unprocessable request") == 1  # logged once per kind
        assert sampler.stats["finish_error"] == 9 and sampler.stats["finish_stop"] == 36

        sent = [r["body"] for r in fake.requests]
        assert len(sent) == 3 * len(prompts)
        assert {r["auth"] for r in fake.requests} == {"Bearer EMPTY"}
        first = sent[0]
        assert first["n"] == 1 and first["max_tokens"] == 9 and first["stop"] == ["#"]
        assert (first["temperature"], first["top_p"], first["top_k"]) == (0.7, 0.9, 20)
        assert first["repetition_penalty"] == 1.05 and first["chat_template"] == "{{ messages }}"
        assert len({r["seed"] for r in sent}) == len(sent)
        # Without seeds, a prompt's seed comes from params.seed and its position, a sample's from its index.
        prompt_seed = derive_seed(params.seed, 1)
        assert {r["seed"] for r in sent if r["messages"][-1]["content"] == "prompt 1"} == {
            derive_seed(prompt_seed, k) for k in range(3)
        }
        # Greedy: one request per prompt, repeated; no sampling filters.
        fake.requests.clear()
        greedy = sampler.generate([[{"role": "user", "content": "g"}]], GenParams(n=3, temperature=0, top_k=5))
        assert len(fake.requests) == 1 and len({c.text for c in greedy[0]}) == 1 and len(greedy[0]) == 3
        assert fake.requests[0]["body"]["top_p"] == 1.0 and "top_k" not in fake.requests[0]["body"]
        assert "stop" not in fake.requests[0]["body"] and "repetition_penalty" not in fake.requests[0]["body"]
        # A server that refuses the recipe's chat template refuses every prompt: a setup error, not a row.
        with pytest.raises(RuntimeError, match="refuses the recipe's chat_template .* --trust-request-chat-template"):
            sampler.generate([[{"role": "user", "content": "UNTRUSTED"}]], params)
    finally:
        sampler.close()


def test_retries_then_failure(scripted):
    conversation = [[{"role": "user", "content": "hi"}]]
    params = GenParams(n=1, max_tokens=4)
    fake = scripted([429, 503])  # two transient failures, then an answer
    sampler = get_sampler("openai", "fake", base_url=fake.url, max_retries=2)
    try:
        assert sampler.generate(conversation, params)[0][0].text.startswith("echo hi")
        assert len(fake.requests) == 3 and sampler.stats["retries"] == 2
    finally:
        sampler.close()

    down = scripted([503] * 10)
    sampler = get_sampler("openai", "fake", base_url=down.url, max_retries=2)
    try:
        with pytest.raises(
            RuntimeError, match=r"failed after 2 retries: HTTP 503: scripted 503; the shard is not"
        ) as e:
            sampler.generate(conversation, params)
        assert "\n" not in str(e.value) and len(down.requests) == 3
    finally:
        sampler.close()

    stalled = scripted(["sleep"] * 10)
    sampler = get_sampler("openai", "fake", base_url=stalled.url, max_retries=1, timeout_s=0.2)
    try:
        with pytest.raises(RuntimeError, match=r"failed after 1 retries: APITimeoutError"):
            sampler.generate(conversation, params)
        assert len(stalled.requests) == 2
    finally:
        sampler.close()


def test_closed_sampler_and_bad_conversation(scripted):
    fake = scripted()
    sampler = get_sampler("openai", "fake", base_url=fake.url)
    with pytest.raises(ValueError, match="conversation 1: the last message must be the user's"):
        sampler.generate([[{"role": "user", "content": "a"}], [{"role": "assistant", "content": "b"}]], GenParams())
    assert fake.requests == []  # validated before anything is sent
    sampler.close()
    with pytest.raises(RuntimeError, match="was closed"):
        sampler.generate([[{"role": "user", "content": "a"}]], GenParams())


def test_penalties_are_sent_only_when_set(scripted) -> None:
    server = scripted()
    sampler = get_sampler("openai", "fake", base_url=server.url)
    try:
        conversation = [{"role": "user", "content": "hi"}]
        sampler.generate([conversation], GenParams(n=1, temperature=0.0, max_tokens=8))
        sampler.generate([conversation], GenParams(n=1, temperature=0.0, max_tokens=8, presence_penalty=0.1))
    finally:
        sampler.close()
    plain, penalised = (r["body"] for r in server.requests)
    assert "presence_penalty" not in plain and "frequency_penalty" not in plain
    assert penalised["presence_penalty"] == 0.1 and "frequency_penalty" not in penalised
