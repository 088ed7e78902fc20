"""`dicomweb apikey create|list|revoke`: API keys for gateways and scripts, in the index database.

`create NAME --scopes write` prints the new key once (only its hash is stored); a running server sees a new
or revoked key within a few seconds (storage/api_keys.py CACHE_SECONDS).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError

from storage import SCOPES, ApiKeyError, ApiKeys, Settings, open_api_keys, parse_labels, parse_scopes


class ApiKeyCommandError(Exception):
    """One line for the user; exit status 1."""


async def _with_keys(settings: Settings, work: Callable[[ApiKeys], object]) -> object:
    if not settings.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        async with open_api_keys(settings.sql_url) as keys:
            return await work(keys)  # type: ignore[misc]
    except SQLAlchemyError as exc:
        reason = (str(exc).splitlines() or [""])[0]
        raise ApiKeyCommandError(f"cannot use the index: {type(exc).__name__}: {reason}") from None


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if args.apikey_command == "create":
            scopes, labels = parse_scopes(args.scopes), parse_labels(args.labels or "")

            async def create(keys: ApiKeys) -> str:
                return await keys.create(args.name, scopes, labels)

            key = asyncio.run(_with_keys(settings, create))
            print(key)
            print(
                f"(API key {args.name!r}, scopes {' '.join(sorted(scopes))}"
                + (f", labels {' '.join(sorted(labels))}" if labels else "")
                + "; shown once: only its hash is stored. Send it as 'Authorization: Bearer KEY' "
                "or 'X-API-Key: KEY'.)",
                flush=True,
            )
            return 0
        if args.apikey_command == "list":

            async def listing(keys: ApiKeys) -> list:
                return await keys.list()

            found = asyncio.run(_with_keys(settings, listing))
            assert isinstance(found, list)
            print(f"{'name':<24} {'scopes':<24} {'labels':<20} {'created (UTC)':<20} state")
            for key in found:
                created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(key.created_at))
                state = (
                    "active"
                    if key.active
                    else "revoked " + time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(key.revoked_at))
                )
                print(
                    f"{key.name:<24} {' '.join(sorted(key.scopes)):<24} "
                    f"{' '.join(sorted(key.labels)) or '(all)':<20} {created:<20} {state}"
                )
            return 0
        if args.apikey_command == "revoke":

            async def revoke(keys: ApiKeys) -> bool:
                return await keys.revoke(args.name)

            if not asyncio.run(_with_keys(settings, revoke)):
                raise ApiKeyCommandError(f"no active API key named {args.name!r}")
            print(f"revoked API key {args.name!r}")
            return 0
    except ApiKeyError as exc:
        raise ApiKeyCommandError(str(exc)) from None
    raise ApiKeyCommandError(f"unknown apikey command {args.apikey_command!r}")


def add_parser(
    sub: argparse._SubParsersAction,
    storage_options: Callable[[argparse.ArgumentParser], None],
    func: Callable[[argparse.Namespace], int],
) -> None:
    p = sub.add_parser(
        "apikey",
        help="create, list and revoke API keys",
        description="API keys for gateways and scripts that cannot use OpenID Connect. "
        "Stored in the index database as hashes; a key is shown once, at creation.",
    )
    keys = p.add_subparsers(dest="apikey_command", required=True, metavar="ACTION")
    create = keys.add_parser("create", help="make a key and print it (once)")
    create.add_argument(
        "name", help="who the key is for (letters, digits, . _ @ -); recorded in the audit log"
    )
    create.add_argument(
        "--scopes",
        required=True,
        help=f"comma-separated, of {', '.join(SCOPES)} (write: STOW; read: QIDO and WADO)",
    )
    create.add_argument(
        "--labels",
        default="",
        help="comma-separated access labels: the key sees only studies with one of them, and "
        "studies it stores get them (default: none, every study)",
    )
    storage_options(create)
    listing = keys.add_parser("list", help="list keys (never the keys themselves)")
    storage_options(listing)
    revoke = keys.add_parser(
        "revoke", help="revoke a key (a running server stops accepting it within seconds)"
    )
    revoke.add_argument("name")
    storage_options(revoke)
    p.set_defaults(func=func)
