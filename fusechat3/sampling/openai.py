"""The "openai" sampling backend: any OpenAI-compatible chat-completions server (a
`vllm serve` process, an inference provider).

One request per sample (n=1), so that `num_tokens` is the server's exact
`usage.completion_tokens` and providers without `n > 1` work; each sample's seed is
derived from its prompt's seed and its index, so a prompt's samples do not depend on
what it is batched with. Requests run in a bounded thread pool. Retries with
exponential backoff on 408/409/429/5xx, timeouts and connection errors are the
`openai` client's own (`max_retries`); when they are used up, `generate` raises and the
shard is not written, so a re-run resumes it.

Over-long prompts: with `tokenizer` (and the context length, from `max_model_len`, the
server's model list or the model config) they are found locally, as in the vllm
backend, and never sent. Without it, a 400 saying the context length is exceeded
becomes finish_reason "error" / error "prompt_too_long" (vLLM itself only rejects
prompts longer than the context and shortens max_tokens for the others). Any other
refusal (4xx) becomes error "rejected", counted and logged once per kind.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any

from fusechat3.errors import RecipeError, UserError
from fusechat3.sampling.base import (
    Completion,
    GenParams,
    count_finishes,
    derive_seed,
    error_completions,
    plan_requests,
    register,
    repeat_greedy,
    samples_per_request,
)

logger = logging.getLogger(__name__)

# The `sampler.engine` options this backend understands, with their defaults.
_ENGINE_DEFAULTS: dict[str, Any] = {
    "base_url": "http://localhost:8000/v1",
    "api_key_env": None,  # name of the environment variable holding the key; None: no key ("EMPTY")
    "max_concurrency": 32,  # requests in flight at once
    "timeout_s": 600.0,  # per request (and per retry)
    "max_retries": 5,  # on 408/409/429/5xx, timeouts, connection errors; exponential backoff
    "tokenizer": None,  # local path or Hub id of the served model's tokenizer: local length check
    "max_model_len": None,  # None: from the server's model list (vLLM) or the model config
}

_FINISH = {"stop": "stop", "length": "length"}  # anything else ("content_filter", ...) is an error
_RETRIED_STATUS = {408, 409, 429}  # and >= 500: what the openai client retries
_CHECK_TIMEOUT_S = 10.0  # the one reachability check at construction: fail fast
_TOO_LONG_HINTS = ("context length", "context_length", "context window", "max_model_len", "too long")
# The transport loggers print every request at INFO; the stage output stays readable.
_CHATTY_LOGGERS = ("openai", "httpx", "httpx2")


class _RequestFailed(Exception):
    """A request that failed after the client's retries: the whole call fails."""


def _one_line(text: object, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _reason(err: BaseException) -> str:
    """Why a request failed, short: the status and server message, or the network error underneath."""
    status = getattr(err, "status_code", None)
    if status is not None:
        return f"HTTP {status}: {_one_line(_server_message(err))}"
    cause = err.__cause__ or err.__context__
    return _one_line(f"{type(err).__name__}: {cause or err}")


def _server_message(err: Any) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(getattr(err, "message", err))


def _quiet_transport_loggers() -> None:
    for name in _CHATTY_LOGGERS:
        log = logging.getLogger(name)
        if log.level == logging.NOTSET:  # the user did not configure it
            log.setLevel(logging.WARNING)


def _options(engine_kwargs: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(engine_kwargs) - set(_ENGINE_DEFAULTS))
    if unknown:
        raise RecipeError(f"sampler.engine: unknown openai option(s) {unknown}; allowed: {sorted(_ENGINE_DEFAULTS)}")
    opts = {**_ENGINE_DEFAULTS, **engine_kwargs}
    problems = []
    if not isinstance(opts["base_url"], str) or not opts["base_url"].startswith(("http://", "https://")):
        problems.append(f"base_url must be an http(s) URL, got {opts['base_url']!r}")
    if not isinstance(opts["max_concurrency"], int) or opts["max_concurrency"] < 1:
        problems.append(f"max_concurrency must be an integer >= 1, got {opts['max_concurrency']!r}")
    if not isinstance(opts["timeout_s"], int | float) or opts["timeout_s"] <= 0:
        problems.append(f"timeout_s must be a number > 0, got {opts['timeout_s']!r}")
    if not isinstance(opts["max_retries"], int) or opts["max_retries"] < 0:
        problems.append(f"max_retries must be an integer >= 0, got {opts['max_retries']!r}")
    if opts["max_model_len"] is not None and (not isinstance(opts["max_model_len"], int) or opts["max_model_len"] < 1):
        problems.append(f"max_model_len must be an integer >= 1, got {opts['max_model_len']!r}")
    if opts["api_key_env"] is not None and (not isinstance(opts["api_key_env"], str) or not opts["api_key_env"]):
        problems.append(f"api_key_env must be the name of an environment variable, got {opts['api_key_env']!r}")
    if problems:
        raise RecipeError("sampler.engine: " + "; ".join(problems))
    return opts


def _api_key(env_name: str | None) -> str:
    if env_name is None:
        return "EMPTY"  # servers without auth (a local `vllm serve`) ignore it; the client wants one
    key = os.environ.get(env_name)
    if not key:
        raise UserError(
            f"openai: the API key variable {env_name} (sampler.engine.api_key_env) is not set: export {env_name}=..."
        )
    return key


@register("openai")
class OpenAISampler:
    """`get_sampler("openai", served_model_name, base_url=..., api_key_env=..., max_concurrency=...,
    timeout_s=..., max_retries=..., tokenizer=..., max_model_len=...)`."""

    def __init__(self, model: str, chat_template: str | None = None, **engine_kwargs: Any) -> None:
        import openai

        opts = _options(engine_kwargs)
        self.model = model
        self.chat_template = chat_template
        self.stats: Counter = Counter()
        self.base_url: str = opts["base_url"]
        self.max_retries: int = opts["max_retries"]
        self.max_concurrency: int = opts["max_concurrency"]
        _quiet_transport_loggers()
        # The key lives only inside the client (which redacts it from its own logs).
        self.client: Any = openai.OpenAI(
            api_key=_api_key(opts["api_key_env"]),
            base_url=self.base_url,
            timeout=float(opts["timeout_s"]),
            max_retries=self.max_retries,
        )
        self._logged: set[str] = set()
        self._lock = threading.Lock()
        served_len = self._check_server(opts["api_key_env"])
        self.tokenizer: Any = None
        self.max_model_len: int | None = None
        if opts["tokenizer"] is not None:
            self._load_tokenizer(opts["tokenizer"], opts["max_model_len"] or served_len)
        elif opts["max_model_len"] is not None:
            logger.warning("openai: max_model_len is used only with a tokenizer (sampler.engine.tokenizer); ignored")
        self.pool: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=self.max_concurrency, thread_name_prefix="openai-sampler"
        )

    def _check_server(self, api_key_env: str | None) -> int | None:
        """Reach the server once, fast, and check it serves `model`; its context length if it says (vLLM)."""
        import openai

        quick = self.client.with_options(timeout=_CHECK_TIMEOUT_S, max_retries=0)
        try:
            served = list(quick.models.list())
        except openai.APIStatusError as err:
            if err.status_code in (401, 403):
                raise UserError(
                    f"openai: {self.base_url} refused the API key (HTTP {err.status_code}): "
                    f"check the key in ${api_key_env or '<none: set sampler.engine.api_key_env>'}"
                ) from None
            if err.status_code == 404:
                raise UserError(
                    f"openai: {self.base_url}/models answered HTTP 404: fix base_url in the recipe's sampler.engine "
                    "or sources[..].engine (an OpenAI-compatible base URL usually ends in /v1)"
                ) from None
            raise UserError(
                f"openai: cannot reach {self.base_url} ({_reason(err)}): start the server or fix base_url in the "
                "recipe's sampler.engine or sources[..].engine"
            ) from None
        except openai.APIError as err:
            raise UserError(
                f"openai: cannot reach {self.base_url} ({_reason(err)}): start the server or fix base_url in the "
                "recipe's sampler.engine or sources[..].engine"
            ) from None
        ids = [m.id for m in served]
        if self.model not in ids:
            raise UserError(
                f"openai: {self.base_url} does not serve model {self.model!r}; it serves {sorted(ids)}: set the "
                "source's model to the served name, or serve it (vllm serve --served-model-name)"
            )
        card = served[ids.index(self.model)]
        served_len = getattr(card, "max_model_len", None)  # a vLLM extension of the model card
        return served_len if isinstance(served_len, int) and served_len > 0 else None

    def _load_tokenizer(self, name: str, max_model_len: int | None) -> None:
        from transformers import AutoConfig, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as e:  # a wrong path or Hub id: transformers says which in its message
            reason = " ".join(str(e).split())[:300]
            raise RecipeError(
                f"sampler.engine.tokenizer: cannot load {name!r} ({reason}); give the served model's tokenizer "
                "as a local folder or Hub id"
            ) from None
        if max_model_len is None:
            try:
                max_model_len = getattr(AutoConfig.from_pretrained(name), "max_position_embeddings", None)
            except (OSError, ValueError):  # a tokenizer-only folder: no model config
                max_model_len = None
        if not max_model_len:
            raise RecipeError(
                "openai: give sampler.engine.max_model_len (the served model's context length): "
                f"the server and {name!r} do not tell it, and the tokenizer's length check needs it"
            )
        self.max_model_len = int(max_model_len)

    def generate(
        self,
        conversations: list[list[dict]],
        params: GenParams,
        seeds: list[int] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[Completion]]:
        if self.pool is None:
            raise RuntimeError(f"openai sampler for {self.model} was closed; create a new one with get_sampler")
        plan = plan_requests(self, conversations, params, seeds, progress)
        fit, prompt_seeds, results = plan.fit, plan.seeds, plan.results

        per_prompt = samples_per_request(params)
        samples: dict[int, list[Completion | None]] = {i: [None] * per_prompt for i in fit}
        left = {i: per_prompt for i in fit}
        futures: dict[Future, tuple[int, int]] = {}
        for i in fit:
            for k in range(per_prompt):
                seed = derive_seed(prompt_seeds[i], k)
                futures[self.pool.submit(self._request, conversations[i], params, seed)] = (i, k)
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    i, k = futures[future]
                    samples[i][k] = future.result()  # raises _RequestFailed: stop the call
                    left[i] -= 1
                    if left[i] == 0:
                        results[i] = repeat_greedy(samples.pop(i), params)
                        # Counted per prompt, as split_too_long counts the ones found locally.
                        for kind in {c.error for c in results[i] if c.error}:
                            self.stats[kind] += 1
                        if progress is not None:
                            progress(1)
        except BaseException as err:  # a failed request, a bug, Ctrl-C: send nothing more
            for future in pending:
                future.cancel()
            if isinstance(err, _RequestFailed):
                raise RuntimeError(f"openai: {err}; the shard is not written, run again to resume") from None
            raise
        count_finishes(results, self.stats)
        return results

    def _request(self, conversation: list[dict], params: GenParams, seed: int) -> Completion:
        """One sample (runs in a pool thread). A refused request is an error Completion; a failed one raises."""
        import openai

        extra: dict[str, Any] = {}
        if not params.greedy and params.top_k > 0:
            extra["top_k"] = params.top_k  # vLLM's extensions of the OpenAI API
        if params.repetition_penalty != 1.0:
            extra["repetition_penalty"] = params.repetition_penalty
        if self.chat_template is not None:
            extra["chat_template"] = self.chat_template
        optional: dict[str, Any] = {"stop": params.stop} if params.stop else {}  # some providers refuse null
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(params, name):
                optional[name] = getattr(params, name)
        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model=self.model,
                messages=list(conversation),
                n=1,
                temperature=params.temperature,
                top_p=1.0 if params.greedy else params.top_p,  # greedy ignores the filter
                max_tokens=params.max_tokens,
                seed=seed,
                extra_body=extra or None,
                **optional,
            )
            response = raw.parse()
        except openai.APIStatusError as err:
            if err.status_code in _RETRIED_STATUS or err.status_code >= 500:
                raise self._failed(err) from None
            return self._refused(err)
        except openai.APIConnectionError as err:  # timeouts included
            raise self._failed(err) from None
        with self._lock:
            self.stats["retries"] += raw.retries_taken
        return self._completion(response)

    def _failed(self, err: BaseException) -> _RequestFailed:
        return _RequestFailed(f"request to {self.base_url} failed after {self.max_retries} retries: {_reason(err)}")

    def _refused(self, err: Any) -> Completion:
        """A 4xx the server will not take back: over-long prompt, or anything else ("rejected")."""
        message = _server_message(err)
        too_long = err.status_code == 400 and (
            err.code == "context_length_exceeded" or any(h in message.lower() for h in _TOO_LONG_HINTS)
        )
        kind = "prompt_too_long" if too_long else "rejected"
        if kind == "rejected" and self.chat_template is not None and "chat template" in message.lower():
            # Every request would be refused: a setup error, not a bad prompt.
            raise _RequestFailed(
                f"{self.base_url} refuses the recipe's chat_template ({_one_line(message)}); start vllm serve with "
                "--trust-request-chat-template, or with --chat-template and no chat_template in the recipe"
            )
        with self._lock:
            self.stats[f"{kind}_http_{err.status_code}"] += 1
            first = f"{kind}/{err.status_code}" not in self._logged
            self._logged.add(f"{kind}/{err.status_code}")
        if first:  # once per kind: one bad prompt per shard should not flood the output
            logger.warning(
                "openai: %s refused a request (HTTP %d, %s): %s; such samples get finish_reason 'error'",
                self.base_url,
                err.status_code,
                kind,
                _one_line(message),
            )
        return error_completions(1, kind)[0]

    def _completion(self, response: Any) -> Completion:
        choice = response.choices[0]
        text = choice.message.content or ""
        usage = getattr(response, "usage", None)
        if usage is not None and usage.completion_tokens is not None:
            num_tokens = int(usage.completion_tokens)
        elif self.tokenizer is not None:  # a server that reports no usage: count the text
            num_tokens = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            num_tokens = 0
        finish = _FINISH.get(choice.finish_reason)
        if finish is None:
            return Completion(text, "error", num_tokens, error=f"finish_reason_{choice.finish_reason}")
        return Completion(text, finish, num_tokens)

    def close(self) -> None:
        """Stop the request threads and close the HTTP connections."""
        if self.pool is None:
            return
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = None
        self.client.close()
