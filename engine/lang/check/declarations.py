"""Checks of the declarations: providers (url, format, key, timeout, cooldown, prices, headers and
the settings of one format) and keys."""
from __future__ import annotations

import difflib
import importlib.util
import re
from dataclasses import replace

from .. import ast
from ..source import Location
from .budgets import check_retry_budget
from ..spec import DEFAULT_COOLDOWN, DEFAULT_FAILURES, DEFAULT_TIMEOUT, KeySpec, Price, ProviderSpec
from ..spec import PoolKey

FORMATS = ("openai", "anthropic", "azure", "gemini", "bedrock", "echo")
PICKS = ("most_room", "round_robin")   # how a provider's key pool picks a key
DEFAULT_URLS = {"anthropic": "https://api.anthropic.com/v1",
                "gemini": "https://generativelanguage.googleapis.com/v1beta"}
DEFAULT_AZURE_API_VERSION = "2024-10-21"
# Settings that mean something to one format only: elsewhere they would be silently ignored.
FORMAT_SETTINGS = {"api_version": "azure", "deployment": "azure", "region": "bedrock",
                   "access_key": "bedrock", "secret_key": "bedrock"}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")   # an RFC 9110 token
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")
# Set by the gateway itself on every call (the body, its length, the signature covers them).
_OWN_HEADERS = frozenset({"content-type", "content-length", "host", "transfer-encoding"})


class DeclarationChecks:
    """Mixed into the checker: needs self.env, self.error, self.warn."""

    def _duplicate(self, kind: str, name: str, loc: Location, seen: dict[str, Location]) -> bool:
        if name in seen:
            self.error(f"duplicate-{kind}", f"{kind} '{name}' is already declared at {seen[name]}", loc)
            return True
        seen[name] = loc
        return False

    def _value(self, value: ast.Value, secret: bool, what: str) -> str | None:
        if value.kind == "env":
            if value.text not in self.env:
                self.error("missing-env", f"environment variable '{value.text}' is not set", value.loc,
                           hint=f"export {value.text}=... before loading the policy")
                return None
            return self.env[value.text]
        if secret and value.text:
            self.warn("literal-secret", f"{what} is written literally in the file", value.loc,
                      hint='prefer env("NAME") so the secret stays out of the policy files')
        return value.text

    def _once(self, settings, loc_seen: dict, setting: ast.Setting) -> bool:
        if setting.name in loc_seen and setting.name != "price":
            self.error("duplicate-setting", f"'{setting.name}' is already set at {loc_seen[setting.name]}",
                       setting.loc)
            return False
        loc_seen[setting.name] = setting.loc
        return True

    def _providers(self, decls) -> dict[str, ProviderSpec]:
        seen: dict[str, Location] = {}
        out: dict[str, ProviderSpec] = {}
        for decl in decls:
            if self._duplicate("provider", decl.name, decl.loc, seen):
                continue
            out[decl.name] = self._pooled(self._provider(decl))
        return out

    def _provider(self, decl: ast.ProviderDecl) -> ProviderSpec:
        opts: dict = {"prices": []}
        set_at: dict = {}
        price_at: dict[str, Location] = {}
        for s in decl.settings:
            if not self._once(decl.settings, set_at, s):
                continue
            if s.name == "url":
                opts["url"] = self._value(s.args[0], False, "url")
            elif s.name == "api_key" and isinstance(s.args[0], ast.KeyPool):
                opts["api_key"] = self._key_pool(decl, s.args[0])
            elif s.name == "api_key":
                opts["api_key"] = self._value(s.args[0], True, f"the api_key of provider '{decl.name}'")
            elif s.name == "format":
                self._format(s, opts)
            elif s.name == "headers":
                opts["headers"] = self._headers(s)
            elif s.name in ("api_version", "deployment", "region"):
                opts[s.name] = self._value(s.args[0], False, s.name)
                if s.name == "region" and opts[s.name] and not _REGION.fullmatch(opts[s.name]):
                    self.error("bad-region", f"'{opts[s.name]}' is not an AWS region", s.args[0].loc,
                               hint='write it as AWS does, e.g. region "us-east-1"')
            elif s.name in ("access_key", "secret_key"):
                opts[s.name] = self._value(s.args[0], True, f"the {s.name} of provider '{decl.name}'")
            elif s.name in ("timeout", "cooldown"):
                self._timing(s, opts)
            elif s.name == "price":
                model, inp, out = s.args
                if model in price_at:
                    self.error("duplicate-setting", f"price of '{model}' is already set at {price_at[model]}", s.loc)
                elif inp < 0 or out < 0:
                    self.error("bad-number", "prices cannot be negative", s.loc)
                price_at[model] = s.loc
                opts["prices"].append((model, Price(float(inp), float(out))))
            elif s.name == "retry_budget":
                opts["retry_budget"] = check_retry_budget(self, s)
        fmt = opts.get("format", "openai")
        url = opts.get("url") or DEFAULT_URLS.get(fmt)
        bad_format = "format" in set_at and "format" not in opts  # already reported
        if fmt in ("openai", "azure") and "url" not in opts and not bad_format:
            self.error("missing-url", f"provider '{decl.name}' needs a url", decl.loc,
                       hint='add url "https://NAME.openai.azure.com"' if fmt == "azure" else
                       'add url "http://..." (any OpenAI-compatible server) or format echo')
        if not bad_format:
            self._format_settings(decl, fmt, opts, set_at)
        if fmt == "bedrock" and opts.get("region") and not opts.get("url"):
            url = f"https://bedrock-runtime.{opts['region']}.amazonaws.com"
        if fmt == "azure":
            opts.setdefault("api_version", DEFAULT_AZURE_API_VERSION)
        return ProviderSpec(decl.name, fmt, url.rstrip("/") if url else url, opts.get("api_key"),
                            opts.get("timeout", DEFAULT_TIMEOUT), opts.get("cooldown", DEFAULT_COOLDOWN),
                            opts.get("failures", DEFAULT_FAILURES), tuple(opts["prices"]),
                            tuple(opts.get("headers", ())), opts.get("api_version"), opts.get("deployment"),
                            opts.get("region"), opts.get("access_key"), opts.get("secret_key"),
                            retry_budget=opts.get("retry_budget"))

    def _key_pool(self, decl: ast.ProviderDecl, pool: ast.KeyPool) -> str | None:
        """`api_key [...]`: the pool's keys kept for _pooled(); the first key is the provider's api_key."""
        keys, names, secrets, literal = [], {}, {}, []
        for index, member in enumerate(pool.members, 1):
            name = member.name or str(index)
            if member.name is not None and name in names:
                self.error("duplicate-setting", f"key '{name}' of the pool is already named at {names[name]}",
                           member.name_loc)
            names.setdefault(name, member.name_loc or member.loc)
            secret = self._value(member.value, False, "")   # a literal is warned about in _pooled()
            if member.value.kind == "string" and secret:
                literal.append((name, member.value.loc))
            if secret == "":   # an empty key would send every call unauthenticated
                self.error("empty-pool-key", f"key {name} of the api_key pool of provider '{decl.name}' is empty",
                           member.value.loc)
            if secret and secret in secrets:
                self.warn("duplicate-pool-key", f"key {name} of the pool has the same value as key "
                          f"{secrets[secret]}", member.value.loc, hint="each key of a pool should be its own")
            secrets.setdefault(secret, name)
            keys.append(PoolKey(name, secret or "", **self._pool_limits(member)))
        if pool.pick is not None and pool.pick not in PICKS:
            close = difflib.get_close_matches(pool.pick, PICKS, n=1)
            self.error("bad-pick", f"unknown pool strategy '{pool.pick}'", pool.pick_loc,
                       hint=f"did you mean '{close[0]}'?" if close else f"use {' or '.join(PICKS)}")
        if not hasattr(self, "_pools"):
            self._pools = {}
        self._pools[decl.name] = (tuple(keys), pool.pick if pool.pick in PICKS else PICKS[0], literal)
        return keys[0].secret or None

    def _pool_limits(self, member: ast.PoolKey) -> dict:
        out: dict = {}
        for limit in member.limits:
            if limit.kind not in ("requests", "tokens"):
                self.error("bad-pool-limit", f"a key of a pool limits requests or tokens, not {limit.kind}",
                           limit.loc, hint="put cost budgets on rules: limit cost 10 per 1d")
            elif limit.kind in out:
                self.error("duplicate-setting", f"this key already has a {limit.kind} limit", limit.loc)
            elif not isinstance(limit.amount, int) or limit.amount < 1:
                self.error("bad-number", "a limit must be a whole number of at least 1", limit.amount_loc)
            elif limit.window < 1:
                self.error("bad-duration", "a limit's window must be at least 1s", limit.window_loc)
            else:
                out[limit.kind] = (limit.amount, limit.window)
        return out

    def _pooled(self, spec: ProviderSpec) -> ProviderSpec:
        pool = getattr(self, "_pools", {}).get(spec.name)
        if not pool:
            return spec
        # The echo format sends its keys nowhere: there they are labels, not secrets.
        for name, loc in pool[2] if spec.format != "echo" else ():
            self.warn("literal-secret", f"key {name} of the api_key pool of provider '{spec.name}' is written "
                      f"literally in the file", loc, hint='prefer env("NAME") so the secret stays out of the policy files')
        return replace(spec, key_pool=pool[0], key_pick=pool[1])

    def _format_settings(self, decl: ast.ProviderDecl, fmt: str, opts: dict, set_at: dict) -> None:
        for name, owner in FORMAT_SETTINGS.items():
            if name in set_at and owner != fmt:
                self.error("format-setting", f"'{name}' is a setting of format {owner}, not {fmt}",
                           set_at[name], hint=f"remove it, or set format {owner}")
        if fmt == "bedrock":
            if importlib.util.find_spec("botocore") is None:
                self.error("missing-extra", f"provider '{decl.name}' (format bedrock) needs botocore, "
                           f"which is not installed", decl.loc, hint="pip install 'edgerules[bedrock]'")
            if "region" not in set_at:
                self.error("missing-region", f"provider '{decl.name}' (format bedrock) needs a region",
                           decl.loc, hint='add region "us-east-1" (the AWS region of the models)')
            missing = [n for n in ("access_key", "secret_key") if n not in set_at]
            if missing:
                self.error("missing-credentials", f"provider '{decl.name}' (format bedrock) needs "
                           f"{' and '.join(missing)}", decl.loc,
                           hint='add access_key env("AWS_ACCESS_KEY_ID") and secret_key env("AWS_SECRET_ACCESS_KEY")')
            if "api_key" in set_at:
                self.error("format-setting", "'api_key' is not a setting of format bedrock (it signs "
                           "with access_key and secret_key)", set_at["api_key"])

    def _headers(self, s: ast.Setting) -> list[tuple[str, str]]:
        out, seen = [], {}
        for name, loc, value in s.args:
            lower = name.lower()
            if not _HEADER_NAME.fullmatch(name):
                self.error("bad-header", f"'{name}' is not a valid header name", loc)
            elif lower in _OWN_HEADERS:
                self.error("bad-header", f"the gateway sets '{name}' itself", loc)
            elif lower in seen:
                self.error("duplicate-setting", f"header '{name}' is already set at {seen[lower]}", loc)
            else:
                seen[lower] = loc
                text = self._value(value, False, "")
                if text is not None and any(ord(c) < 32 or ord(c) == 127 for c in text):
                    self.error("bad-header", f"the value of header '{name}' has a control character",
                               value.loc)
                elif text is not None:
                    out.append((lower, text))
        return out

    def _timing(self, s: ast.Setting, opts: dict) -> None:
        """`timeout D` and `cooldown D after N failures`, as providers and tool servers write them."""
        if s.name == "timeout":
            if s.args[0] <= 0:
                self.error("bad-duration", "timeout must be longer than zero", s.loc)
            opts["timeout"] = s.args[0]
            return
        duration, failures, failures_loc = s.args
        if duration <= 0:
            self.error("bad-duration", "cooldown must be longer than zero", s.loc)
        if not isinstance(failures, int) or failures < 1:
            self.error("bad-number", "failures must be a whole number of at least 1", failures_loc)
        opts["cooldown"], opts["failures"] = duration, failures

    def _format(self, s: ast.Setting, opts: dict) -> None:
        fmt = s.args[0]
        if fmt in FORMATS:
            opts["format"] = fmt
            return
        close = difflib.get_close_matches(fmt, FORMATS, n=1)
        self.error("bad-format", f"unknown format '{fmt}'", s.loc,
                   hint=f"did you mean '{close[0]}'?" if close else f"use {', '.join(FORMATS[:-1])} or {FORMATS[-1]}")

    def _keys(self, decls) -> tuple[KeySpec, ...]:
        seen: dict[str, Location] = {}
        out = []
        for decl in decls:
            if self._duplicate("key", decl.name, decl.loc, seen):
                continue
            secret = digest = tools = None
            set_at: dict = {}
            for s in decl.settings:
                if not self._once(decl.settings, set_at, s):
                    continue
                if s.name == "secret":
                    secret = self._value(s.args[0], True, f"the secret of key '{decl.name}'")
                elif s.name == "sha256":
                    digest = s.args[0].lower()
                    if not _SHA256.fullmatch(digest):
                        self.error("bad-sha256", "sha256 must be 64 hexadecimal digits", s.loc)
                elif s.name == "tools":
                    tools = tuple(glob for glob, _ in s.args)   # checked against servers in tools.py
            if ("secret" in set_at) == ("sha256" in set_at):
                self.error("key-secret", f"key '{decl.name}' needs exactly one of secret or sha256", decl.loc)
            elif secret == "":
                self.error("key-secret", f"the secret of key '{decl.name}' is empty", set_at["secret"])
            out.append(KeySpec(decl.name, secret or None, digest, tools))
        return tuple(out)
