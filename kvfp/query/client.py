"""POST with retries: what a well-behaved client does against a busy or flaky server.

Retried: 429 and 5xx (honouring ``Retry-After``), timeouts, dropped connections and bodies that are
not JSON. Not retried: other 4xx, which name a mistake in the request. The API key goes into the
``Authorization`` header only; no message built here contains a header.
"""

from __future__ import annotations

import email.utils
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

MAX_WAIT = 60.0  # seconds; a Retry-After beyond this is cut to it


class RequestFailed(Exception):
    """The server refused the request or kept failing; ``status`` is its last HTTP status (or None)."""

    def __init__(self, message: str, status: int | None = None, body: str = "", retryable: bool = False):
        super().__init__(message)
        self.status, self.body, self.retryable = status, body, retryable


@dataclass
class Stats:
    retries: int = 0
    waited: float = 0.0


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _message(resp: httpx.Response) -> str:
    """The server's own error message where it gives one in OpenAI's shape, else the body's start."""
    try:
        err = resp.json().get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    except (ValueError, AttributeError):
        pass
    return resp.text[:300]


class Client:
    def __init__(self, base: str, *, timeout: float, retries: int, api_key: str | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base, timeout=httpx.Timeout(timeout), headers=headers)
        self.retries, self.sleep, self.stats = retries, sleep, Stats()

    def close(self) -> None:
        self._http.close()

    def get(self, path: str) -> dict:
        return self._send("GET", path, None)

    def post(self, path: str, body: dict, retries: int | None = None) -> dict:
        return self._send("POST", path, body, self.retries if retries is None else retries)

    def _send(self, method: str, path: str, body: dict | None, retries: int | None = None) -> dict:
        retries = self.retries if retries is None else retries
        attempt = 0
        while True:
            wait = None
            try:
                resp = self._http.request(method, path, json=body)
                if resp.status_code == 429 or resp.status_code >= 500:
                    failure = RequestFailed(f"HTTP {resp.status_code}: {_message(resp)}", resp.status_code,
                                            resp.text, retryable=True)
                    wait = _retry_after(resp)
                elif resp.status_code >= 400:
                    raise RequestFailed(f"HTTP {resp.status_code}: {_message(resp)}", resp.status_code, resp.text)
                else:
                    try:
                        data = json.loads(resp.content)
                    except ValueError as e:
                        failure = RequestFailed(f"the response is not valid JSON ({e})", resp.status_code,
                                                resp.text[:300], retryable=True)
                    else:
                        if not isinstance(data, dict):
                            raise RequestFailed(f"the response is JSON but not an object ({type(data).__name__})",
                                                resp.status_code)
                        return data
            except httpx.TimeoutException:
                failure = RequestFailed(f"no complete response within {self._http.timeout.read:g} s (timeout)",
                                        retryable=True)
            except httpx.TransportError as e:
                failure = RequestFailed(f"connection failed ({type(e).__name__}: {e})", retryable=True)
            if attempt >= retries:
                raise RequestFailed(f"{failure} (after {attempt} retr{'y' if attempt == 1 else 'ies'})",
                                    failure.status, failure.body, retryable=True)
            attempt += 1
            self.stats.retries += 1
            delay = min(MAX_WAIT, wait if wait is not None else 0.5 * 2 ** (attempt - 1) * (1 + random.random() / 4))
            self.stats.waited += delay
            self.sleep(delay)
