#!/usr/bin/env python3
"""Writes the seed corpus of the virtiofs fuzz target (fuzz/corpus/virtiofs): real FUSE
messages (Linux include/uapi/linux/fuse.h layouts) in descriptor chains, laid out as
starling_vmm::fuzzing::virtio_fs reads its input:

  byte 0     queue: even = hiprio (0), odd = requests (1)
  byte 1     queue size exponent (5: 32 descriptors)
  byte 2...  guest memory from 0x1000: descriptor table at 0x1000, available ring at 0x3000,
             used ring at 0x4000 (written by the device); requests here at 0x5000 + 0x100 k,
             replies at 0x6000 + 0x100 k, READ data at 0xa000, READDIRPLUS data at 0xc000.

Node ids are those of fuzzing::fs_tree imported into a fresh store: 1 root, 2 big, 3 d,
4 hello, 5 d/link (once d is loaded). crates/vmm/tests/fuzz_corpus.rs checks the replies.
Run from the repository root: python3 fuzz/virtiofs_seeds.py
"""
import os
import struct

MEM = 0x10000
BASE = 0x1000
F_NEXT, F_WRITE = 1, 2

OP = dict(LOOKUP=1, FORGET=2, GETATTR=3, SETATTR=4, READLINK=5, MKDIR=9, UNLINK=10, OPEN=14,
          READ=15, WRITE=16, STATFS=17, RELEASE=18, GETXATTR=22, LISTXATTR=23, INIT=26,
          OPENDIR=27, CREATE=35, BATCH_FORGET=42, READDIRPLUS=44,
          # Numbers the protocol never gave an operation, and one past every operation.
          UNNUMBERED_0=0, UNNUMBERED_7=7, UNNUMBERED_19=19, PAST_ALL=0x7fff_ffff)


class Seed:
    def __init__(self, queue):
        self.mem = bytearray(MEM - BASE)
        self.queue = queue
        self.ndesc = 0
        self.heads = []
        self.unique = 0

    def put(self, addr, data):
        self.mem[addr - BASE:addr - BASE + len(data)] = data

    def desc(self, addr, length, flags, nxt=0):
        i = self.ndesc
        self.put(0x1000 + 16 * i, struct.pack('<QIHH', addr, length, flags, nxt))
        self.ndesc += 1
        return i

    def chain(self, parts):
        """parts: (addr, len, writable); linked in order, made available."""
        first = self.ndesc
        for k, (addr, length, w) in enumerate(parts):
            last = k == len(parts) - 1
            self.desc(addr, length, (F_WRITE if w else 0) | (0 if last else F_NEXT),
                      0 if last else first + k + 1)
        self.heads.append(first)

    def request(self, op, nodeid, body, reply_len, data=None, hdr_len=None):
        k = len(self.heads)
        self.unique += 1
        msg = struct.pack('<IIQQIIIHH', hdr_len if hdr_len is not None else 40 + len(body),
                          OP[op], self.unique, nodeid, 0, 0, 0, 0, 0) + body
        req = 0x5000 + 0x100 * k
        assert len(msg) <= 0x100
        self.put(req, msg)
        parts = [(req, len(msg), False)]
        if reply_len:
            parts.append((0x6000 + 0x100 * k, reply_len, True))
        if data:
            parts.append(data)
        self.chain(parts)

    def write(self, name):
        self.put(0x3000, struct.pack('<HH', 0, len(self.heads)) +
                 b''.join(struct.pack('<H', h) for h in self.heads))
        end = max(i for i, b in enumerate(self.mem) if b) + 1
        path = os.path.join('fuzz/corpus/virtiofs', name)
        with open(path, 'wb') as f:
            f.write(bytes([self.queue, 5]) + bytes(self.mem[:end]))


def read_in(fh, off, size):
    return struct.pack('<QQIIQII', fh, off, size, 0, 0, 0, 0)


INIT_FLAGS = 0x1 | 0x10 | 0x2000 | 0x4000 | 0x40000 | 0x400000 | 0x800000 | 0x40000000

s = Seed(1)
s.request('INIT', 0, struct.pack('<IIII', 7, 38, 131072, INIT_FLAGS) + bytes(48), 16 + 64)
s.write('init')

s = Seed(1)
s.request('LOOKUP', 1, b'big\0', 16 + 128)
s.request('GETATTR', 2, struct.pack('<IIQ', 0, 0, 0), 16 + 104)
s.request('OPEN', 2, struct.pack('<II', 0, 0), 16 + 16)
s.request('READ', 2, read_in(1, 0, 8192), 16, data=(0xa000, 8192, True))
s.request('READDIRPLUS', 1, read_in(0, 0, 4096), 16, data=(0xc000, 4096, True))
s.request('LOOKUP', 3, b'link\0', 16 + 128)
s.request('READLINK', 5, b'', 16 + 64)
s.request('RELEASE', 2, struct.pack('<QIIQ', 1, 0, 0, 0), 16)
s.write('lookup-read')

s = Seed(1)
s.request('LOOKUP', 1, b'hello\0', 16 + 128)
s.request('GETXATTR', 4, struct.pack('<II', 0, 0) + b'user.x\0', 16 + 8)
s.request('GETXATTR', 4, struct.pack('<II', 64, 0) + b'user.x\0', 16 + 64)
s.request('LISTXATTR', 4, struct.pack('<II', 64, 0), 16 + 64)
s.request('STATFS', 1, b'', 16 + 80)
s.write('xattr-statfs')

s = Seed(1)
s.request('MKDIR', 1, struct.pack('<II', 0o755, 0) + b'new\0', 16 + 128)
s.request('CREATE', 1, struct.pack('<IIII', 0x41, 0o644, 0, 0) + b'new\0', 16 + 144)
s.request('WRITE', 2, struct.pack('<QQIIQII', 7, 0, 4, 0, 0, 0, 0) + b'data', 16 + 8)
s.request('SETATTR', 2, struct.pack('<IIQQQQQQIIIIIIII', 1 << 3, 0, 0, 0, 0, 0, 0, 0,
                                    0, 0, 0, 0, 0, 0, 0, 0), 16 + 104)
s.request('UNLINK', 1, b'hello\0', 16)
s.request('OPEN', 1, struct.pack('<II', 1, 0), 16 + 16)
s.write('writes')

s = Seed(0)
s.request('FORGET', 2, struct.pack('<Q', 1), 0)
s.request('BATCH_FORGET', 0, struct.pack('<II', 2, 0) + struct.pack('<QQQQ', 2, 1, 3, 1), 0)
s.write('forget-hiprio')

s = Seed(1)
# A header longer than its chain, one shorter than a header, a READ of 1 GiB into 4 KiB,
# a request outside guest memory, and a descriptor loop.
s.request('LOOKUP', 1, b'big\0', 16 + 128, hdr_len=4000)
s.request('LOOKUP', 1, b'big\0', 16 + 128, hdr_len=8)
s.request('READ', 2, read_in(0, 0, 1 << 30), 16, data=(0xa000, 4096, True))
s.unique += 1
s.chain([(0xfffff000, 64, False), (0x6300, 144, True)])
loop = s.ndesc
s.desc(0x5000, 44, F_NEXT, loop + 1)
s.desc(0x6400, 144, F_NEXT | F_WRITE, loop)
s.heads.append(loop)
s.write('hostile')

s = Seed(1)
s.request('UNNUMBERED_7', 1, b'', 16)
s.request('UNNUMBERED_19', 1, b'', 16)
s.request('PAST_ALL', 1, b'', 16)
s.request('UNNUMBERED_0', 1, b'', 16)
s.write('unnumbered')
