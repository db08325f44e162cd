"""The read-only FUSE filesystem: pyfuse3 handlers over the plaintext views, run under trio.

Access control is ours, not the kernel's: the mount has no ``default_permissions`` (mode bits are
informational) and, where allowed, ``allow_other``, so every uid's requests reach us and
:meth:`CryptoFS._check` decides with the uid of the calling process. Looked-up names are never
cached by the kernel (entry_timeout 0): a process of another uid cannot reach a file through a
dentry an allowed process left behind, because every path walk comes back to ``lookup``. Opens and
directory listings always come to us. Attributes are cached (they never change) so reads do not pay
a GETATTR round trip each.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import pyfuse3
import trio

from ._models import CACHE_MODES, CacheMode, ServedFile
from .errors import CfsError

# Files and folders never change while mounted: attributes can be cached for as long as we like.
_ATTR_TIMEOUT = 3600.0
# Names are re-checked on every path walk so the uid check cannot be bypassed via the dcache.
_ENTRY_TIMEOUT = 0.0
# Advertised I/O size (st_blksize): Python's buffered readers and many tools size their reads by it.
_BLKSIZE = 1 << 20
# Kernel readahead for the mount (root only): 16 MiB windows made cold reads arrive as 1 MiB
# requests (the FUSE maximum with libfuse's defaults) instead of 128 KiB ones; measured 0.8 ->
# 1.4-2.7 GB/s. Extra pages read around an mmap fault are memory copies here, never I/O.
_READAHEAD_KIB = 16384


class _Node:
    __slots__ = ("attr", "children", "ino", "view")

    def __init__(self, ino: int, attr: pyfuse3.EntryAttributes, view: memoryview | None) -> None:
        self.ino = ino
        self.attr = attr
        self.view = view
        self.children: dict[bytes, int] | None = None if view is not None else {}


class CryptoFS(pyfuse3.Operations):
    """Serves ``files`` read-only; only ``uids`` may look up, list, open or read anything."""

    def __init__(
        self,
        files: Sequence[ServedFile],
        uids: frozenset[int],
        cache: CacheMode = "keep",
        owner: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if cache not in CACHE_MODES:
            raise CfsError(f"unknown cache mode {cache!r}: choose one of {', '.join(CACHE_MODES)}")
        self._uids = uids
        self._cache = cache
        self._uid, self._gid = owner or (os.getuid(), os.getgid())
        self._now = time.time_ns()
        self._nodes: dict[int, _Node] = {}
        self._parent: dict[int, int] = {}
        root = self._add(stat.S_IFDIR | 0o500, 0, None)
        assert root.ino == pyfuse3.ROOT_INODE
        self._parent[root.ino] = root.ino
        for f in files:
            folder = root
            parts = f.path.split("/")
            for part in parts[:-1]:
                assert folder.children is not None
                key = part.encode()
                if key not in folder.children:
                    sub = self._add(stat.S_IFDIR | 0o500, 0, None)
                    folder.children[key] = sub.ino
                    self._parent[sub.ino] = folder.ino
                    folder.attr.st_nlink += 1
                folder = self._nodes[folder.children[key]]
            mode = stat.S_IFREG | (0o500 if f.executable else 0o400)
            node = self._add(mode, len(f.view), f.view)
            assert folder.children is not None
            folder.children[parts[-1].encode()] = node.ino
            self._parent[node.ino] = folder.ino

    def _add(self, mode: int, size: int, view: memoryview | None) -> _Node:
        ino = len(self._nodes) + pyfuse3.ROOT_INODE
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.generation = 0
        a.entry_timeout = _ENTRY_TIMEOUT
        a.attr_timeout = _ATTR_TIMEOUT
        a.st_mode = mode
        a.st_nlink = 2 if stat.S_ISDIR(mode) else 1
        a.st_uid = self._uid
        a.st_gid = self._gid
        a.st_rdev = 0
        a.st_size = size
        a.st_blksize = _BLKSIZE
        a.st_blocks = -(-size // 512)
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self._now
        node = _Node(ino, a, view)
        self._nodes[ino] = node
        return node

    def _check(self, ctx: pyfuse3.RequestContext) -> None:
        if ctx.uid not in self._uids:
            raise pyfuse3.FUSEError(errno.EACCES)

    def _node(self, ino: int) -> _Node:
        try:
            return self._nodes[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    # --- reading -------------------------------------------------------------------------------

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._check(ctx)
        parent = self._node(parent_inode)
        if parent.children is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if name == b".":
            return parent.attr
        if name == b"..":
            return self._nodes[self._parent[parent.ino]].attr
        ino = parent.children.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._nodes[ino].attr

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        return None  # inodes live as long as the mount: nothing to free

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        # The mount root's attributes are what any uid sees of a mountpoint (findmnt, df, stat):
        # a 0500 folder of the mounting user, nothing about the models. Everything else is checked.
        if inode != pyfuse3.ROOT_INODE:
            self._check(ctx)
        return self._node(inode).attr

    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        self._check(ctx)
        node = self._node(inode)
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        return not (mode & os.X_OK and node.children is None and not node.attr.st_mode & 0o100)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self._check(ctx)
        if self._node(inode).children is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        children = self._node(fh).children
        assert children is not None
        entries = sorted(children.items())
        for i in range(start_id, len(entries)):
            name, ino = entries[i]
            if not pyfuse3.readdir_reply(token, name, self._nodes[ino].attr, i + 1):
                break

    async def releasedir(self, fh: int) -> None:
        return None

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        self._check(ctx)
        node = self._node(inode)
        if node.children is not None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise pyfuse3.FUSEError(errno.EROFS)
        return pyfuse3.FileInfo(
            fh=inode, keep_cache=self._cache == "keep", direct_io=self._cache == "direct"
        )

    async def read(self, fh: int, off: int, size: int) -> bytes:
        view = self._nodes[fh].view
        assert view is not None
        # A slice of the plaintext view, not a copy: pyfuse3 takes any contiguous buffer (its
        # stub says bytes) and hands the pointer straight to fuse_reply_buf.
        return cast(bytes, view[off : off + size])

    async def release(self, fh: int) -> None:
        return None

    async def flush(self, fh: int) -> None:
        return None

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        self._check(ctx)
        s = pyfuse3.StatvfsData()
        total = sum(n.attr.st_size for n in self._nodes.values())
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = -(-total // 4096)
        s.f_bfree = s.f_bavail = 0
        s.f_files = len(self._nodes)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        self._check(ctx)
        raise pyfuse3.FUSEError(errno.EINVAL)

    # --- no extended attributes ----------------------------------------------------------------

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        self._check(ctx)
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        self._check(ctx)
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self._check(ctx)
        raise pyfuse3.FUSEError(errno.EROFS)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check(ctx)
        raise pyfuse3.FUSEError(errno.EROFS)

    # --- every change is refused (the kernel already says EROFS for an `ro` mount) ------------

    def _refuse(self, ctx: pyfuse3.RequestContext) -> None:
        self._check(ctx)
        raise pyfuse3.FUSEError(errno.EROFS)

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._refuse(ctx)
        raise AssertionError("unreachable")

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._refuse(ctx)
        raise AssertionError("unreachable")

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._refuse(ctx)
        raise AssertionError("unreachable")

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._refuse(ctx)
        raise AssertionError("unreachable")

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._refuse(ctx)
        raise AssertionError("unreachable")

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._refuse(ctx)
        raise AssertionError("unreachable")

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._refuse(ctx)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._refuse(ctx)

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self._refuse(ctx)


def _allow_other_permitted() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        with open("/etc/fuse.conf") as f:
            return any(line.split("#", 1)[0].strip() == "user_allow_other" for line in f)
    except OSError:
        return False


def mount_options(uids: frozenset[int]) -> set[str]:
    """No default_permissions: the uid check in CryptoFS is the policy, not mode bits."""
    options = {"fsname=modelseal", "subtype=modelseal", "ro", "nosuid", "nodev"}
    if _allow_other_permitted():
        options.add("allow_other")
    elif uids != {os.getuid()}:
        raise CfsError(
            "letting other uids in needs allow_other: add user_allow_other to /etc/fuse.conf "
            "or mount as root"
        )
    # Without allow_other the kernel itself turns away every uid but ours: still EACCES.
    return options


def _raise_readahead(mountpoint: Path) -> None:
    """Let the kernel read ahead in large requests (root only; ignored if not permitted).

    With the default 128 KiB window a cold sequential read costs one round trip through this
    process per 128 KiB; a bigger window means fewer, larger requests.
    """
    dev = os.stat(mountpoint).st_dev
    knob = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    with contextlib.suppress(OSError):
        knob.write_text(str(_READAHEAD_KIB))


async def _until_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for _ in signals:
            pyfuse3.terminate()
            return


async def _announce(mountpoint: Path, on_ready: Callable[[], None]) -> None:
    # A stat through the mount completes only once the kernel's INIT and our reply went through:
    # after this, the mount is usable, not merely present in the mount table.
    await trio.to_thread.run_sync(os.stat, mountpoint)
    _raise_readahead(mountpoint)
    on_ready()


async def _main(mountpoint: Path, on_ready: Callable[[], None]) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_until_signal)
        nursery.start_soon(_announce, mountpoint, on_ready)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def serve(
    files: Sequence[ServedFile],
    mountpoint: Path,
    uids: frozenset[int],
    cache: CacheMode,
    on_ready: Callable[[], None],
) -> None:
    """Mount, serve until SIGTERM/SIGINT/SIGHUP or an external unmount, then unmount."""
    fs = CryptoFS(files, uids, cache)
    options = mount_options(uids)

    def interrupt(sig: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Until trio's own receiver is listening, SIGTERM/SIGHUP's default action would kill us with
    # the mount left behind ("transport endpoint is not connected"): turn them into an exception
    # so the finally below unmounts.
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        try:
            pyfuse3.init(fs, str(mountpoint), options)
        except RuntimeError as e:
            raise CfsError(f"cannot mount at {mountpoint}: {e}") from None
        try:
            trio.run(_main, mountpoint, on_ready)
        except KeyboardInterrupt:
            pass  # a stop request that came before trio listened: unmount as for any other
        finally:
            # Lazy unmount (root) or fusermount3 -u -z; a no-op if someone already unmounted us.
            pyfuse3.close(unmount=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
