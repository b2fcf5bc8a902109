"""A client workspace: its view, its root on disk, and the real files under that root.

Converts between the three path syntaxes p4 accepts (depot `//depot/x`, client `//ws/x`,
local `/root/x` or relative to the current directory) and resolves file arguments to
predicates over depot paths. Synced files are read-only, as with p4's default `noallwrite`.
"""

from __future__ import annotations

import os
import stat

from p4sim import TYPE_CHECKING
from p4sim import messages as msg
from p4sim.errors import P4Error
from p4sim.view import Mapping, Pattern, ViewLine, escape, literal_prefix, split_revspec, unescape

if TYPE_CHECKING:
    from collections.abc import Callable

READ_ONLY = 0o444
WRITABLE = 0o644


class FileArg:
    """One file argument: which depot files it selects and where a query should look."""

    __slots__ = ("matches", "prefixes", "revspec", "text")

    def __init__(self, text: str, revspec: str | None, prefixes: list[str], matches: Callable[[str], bool]):
        self.text = text  # the argument as typed, without its revision specifier
        self.revspec = revspec
        self.prefixes = prefixes
        self.matches = matches  # depot path -> bool


class Workspace:
    def __init__(self, name: str, root: str, view_lines: list[ViewLine], cwd: str):
        self.name = name
        self.root = os.path.normpath(root)
        self.view = Mapping(view_lines)
        self.cwd = cwd
        self._client_prefix = f"//{name}/"

    # -- path conversions ----------------------------------------------------------------------
    def depot_to_client(self, depot: str) -> str | None:
        return self.view.translate(depot)

    def client_to_depot(self, client_path: str) -> str | None:
        return self.view.translate(client_path, reverse=True)

    def client_to_local(self, client_path: str) -> str:
        return os.path.join(self.root, unescape(client_path[len(self._client_prefix) :]))

    def depot_to_local(self, depot: str) -> str | None:
        client_path = self.depot_to_client(depot)
        return None if client_path is None else self.client_to_local(client_path)

    def mapped_client(self, depot: str) -> str:
        """The client path of a file the command needs on disk; fails if the view lost it."""
        client_path = self.depot_to_client(depot)
        if client_path is None:
            raise P4Error(msg.per_arg(msg.NOT_IN_VIEW, depot))
        return client_path

    def mapped_local(self, depot: str) -> str:
        return self.client_to_local(self.mapped_client(depot))

    def to_client_syntax(self, arg: str, escape_names: bool = False) -> str | None:
        """Client-syntax form of a client, local or relative path (wildcards kept)."""
        if arg.startswith(self._client_prefix):
            return arg
        local = os.path.normpath(os.path.join(self.cwd, arg))
        if local == self.root:
            return self._client_prefix[:-1]
        if not local.startswith(self.root + "/"):
            return None
        rel = local[len(self.root) + 1 :]
        return self._client_prefix + (escape(rel) if escape_names else rel)

    def local_to_depot(self, arg: str, escape_names: bool = False) -> str | None:
        client_path = self.to_client_syntax(arg, escape_names)
        return None if client_path is None else self.client_to_depot(client_path)

    def is_depot_syntax(self, arg: str) -> bool:
        return arg.startswith("//") and not arg.startswith(self._client_prefix)

    def file_arg(self, arg: str) -> FileArg:
        """Resolve one argument (any syntax, wildcards allowed) to a depot-path predicate."""
        path, revspec = split_revspec(arg)
        if self.is_depot_syntax(path):
            pattern = Pattern(path)
            return FileArg(path, revspec, [literal_prefix(path)], lambda d: pattern.match(d) is not None)
        client_pattern = self.to_client_syntax(path)
        if client_pattern is None:
            return FileArg(path, revspec, [], lambda d: False)
        pattern = Pattern(client_pattern)

        def matches(depot: str) -> bool:
            client_path = self.depot_to_client(depot)
            return client_path is not None and pattern.match(client_path) is not None

        return FileArg(path, revspec, self.view.left_prefixes(), matches)

    def whole_view(self) -> FileArg:
        return FileArg(
            f"//{self.name}/...", None, self.view.left_prefixes(), lambda d: self.depot_to_client(d) is not None
        )


# -- the real files ------------------------------------------------------------------------------
_known_dirs: set[str] = set()  # directories this process already made sure exist


def write_file(local: str, data: bytes, writable: bool = False) -> None:
    """Write a workspace file with few system calls: sync writes thousands of them."""
    directory = os.path.dirname(local)
    if directory not in _known_dirs:
        os.makedirs(directory, exist_ok=True)
        _known_dirs.add(directory)
    mode = WRITABLE if writable else READ_ONLY
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        fd = os.open(local, flags, mode)
    except PermissionError:  # an existing read-only file (only root may write it as is)
        os.chmod(local, WRITABLE)
        fd = os.open(local, flags, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)  # the file may have existed with other permissions
    finally:
        os.close(fd)


def read_file(local: str) -> bytes:
    try:
        with open(local, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def remove_file(local: str) -> None:
    try:
        os.unlink(local)
    except FileNotFoundError:
        pass


def set_writable(local: str, writable: bool) -> None:
    if os.path.exists(local):
        os.chmod(local, WRITABLE if writable else READ_ONLY)


def is_writable_file(local: str) -> bool:
    try:
        return bool(os.stat(local).st_mode & stat.S_IWUSR)
    except FileNotFoundError:
        return False
