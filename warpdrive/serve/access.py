"""Who may use the broker: the socket's mode and group, then each peer's credentials.

The socket file's permissions decide who can connect at all (`--mode`, `--group`); every
connection is then checked again with SO_PEERCRED/SO_PEERGROUPS (as of the peer's connect())
against the allow list, so a socket left with wider permissions, or one passed around, does not
widen access. Root and the broker's own user are always allowed; `--allow-uid` adds users,
`--allow-gid` (and the socket's `--group`) add everyone whose primary or supplementary groups
include one of them.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Iterable

from ..emu.server import Peer
from ..errors import InvalidArgumentError


def user_id(name: str) -> int:
    """A uid from a user name or number."""
    if name.isdigit():
        return int(name)
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        raise InvalidArgumentError(f"no user named {name!r}",
                                   hint="give a user name or a numeric uid") from None


def group_id(name: str) -> int:
    """A gid from a group name or number."""
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise InvalidArgumentError(f"no group named {name!r}",
                                   hint="give a group name or a numeric gid") from None


class AllowList:
    """The peer policy (see the module docstring): call it with a `Peer`; None = allowed, else
    why not."""

    def __init__(self, uids: Iterable[int] = (), gids: Iterable[int] = ()) -> None:
        self.uids = {0, os.getuid(), *uids}
        self.gids = set(gids)

    def __call__(self, peer: Peer) -> str | None:
        if peer.uid in self.uids:
            return None
        if self.gids and (peer.gid in self.gids or self.gids.intersection(peer.groups)):
            return None
        groups = ",".join(str(g) for g in sorted({peer.gid, *peer.groups}))
        return (f"uid {peer.uid} (groups {groups}) is not allowed (--allow-uid, --allow-gid or "
                "the socket's --group)")

    def describe(self) -> str:
        out = "uids " + ",".join(str(u) for u in sorted(self.uids))
        if self.gids:
            out += "; gids " + ",".join(str(g) for g in sorted(self.gids))
        return out
