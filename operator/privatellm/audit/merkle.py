"""Merkle trees over a segment's records, with leaf and node hashes kept apart.

leaf = SHA-256(0x00 || body), node = SHA-256(0x01 || left || right). A level
with an odd count carries its last hash up unchanged; the record count is signed
with the root, so the shape of the tree is fixed by it.
"""

from __future__ import annotations

import hashlib

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(body: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + body).digest()


def merkle_root(leaves: list[bytes]) -> bytes:
    """The root over leaf hashes in order (EMPTY_ROOT for none)."""
    if not leaves:
        return EMPTY_ROOT
    level = leaves
    sha256 = hashlib.sha256
    while len(level) > 1:
        paired = [
            sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


class MerkleFrontier:
    """The same root as `merkle_root`, kept up to date leaf by leaf.

    It holds the roots of the perfect subtrees the leaves so far form (at most one
    per power of two), so adding a leaf costs one hash on average and the root is
    there at once when a segment is sealed.
    """

    def __init__(self) -> None:
        self._nodes: list[tuple[int, bytes]] = []  # (leaf count, subtree root), largest first
        self.count = 0

    def add(self, leaf: bytes) -> None:
        size, node = 1, leaf
        nodes = self._nodes
        while nodes and nodes[-1][0] == size:
            left_size, left = nodes.pop()
            node = hashlib.sha256(b"\x01" + left + node).digest()
            size += left_size
        nodes.append((size, node))
        self.count += 1

    def root(self) -> bytes:
        if not self._nodes:
            return EMPTY_ROOT
        root = self._nodes[-1][1]
        for _, node in reversed(self._nodes[:-1]):
            root = hashlib.sha256(b"\x01" + node + root).digest()
        return root
