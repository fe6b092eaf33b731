#!/usr/bin/env python3
"""Writes the seed corpus of the virtio_net fuzz target (fuzz/corpus/virtio_net), laid out as
starling_vmm::fuzzing::virtio_net reads its input:

  byte 0     bit 0: receive queue (the backend holds fuzzing::net_rx_frame, 1526 bytes with
             its header), else transmit; bit 1: mergeable receive buffers; bit 2: checksum
             and TSO offloads accepted
  byte 1     queue size exponent (4: 16 descriptors)
  byte 2...  guest memory from 0x1000: descriptor table at 0x1000, available ring at 0x3000,
             used ring at 0x4000 (written by the device); frames at 0x5000 and up.

crates/vmm/tests/fuzz_corpus.rs checks what the device did with each.
Run from the repository root: python3 fuzz/net_seeds.py
"""
import os
import struct

MEM = 0x10000
BASE = 0x1000
F_NEXT, F_WRITE = 1, 2


class Seed:
    def __init__(self, flags):
        self.mem = bytearray(MEM - BASE)
        self.flags = flags
        self.ndesc = 0
        self.heads = []

    def put(self, addr, data):
        self.mem[addr - BASE:addr - BASE + len(data)] = data

    def chain(self, parts):
        """parts: (addr, len, writable) in order; returns the head."""
        head = self.ndesc
        for i, (addr, length, w) in enumerate(parts):
            last = i == len(parts) - 1
            flags = (0 if last else F_NEXT) | (F_WRITE if w else 0)
            nxt = 0 if last else self.ndesc + 1
            self.put(0x1000 + 16 * self.ndesc, struct.pack("<QIHH", addr, length, flags, nxt))
            self.ndesc += 1
        self.heads.append(head)
        return head

    def write(self, name):
        self.put(0x3000, struct.pack("<HH", 0, len(self.heads)))
        for i, h in enumerate(self.heads):
            self.put(0x3004 + 2 * i, struct.pack("<H", h))
        data = bytes([self.flags, 4]) + bytes(self.mem[:0x5000 - BASE + 0x2000])
        os.makedirs("fuzz/corpus/virtio_net", exist_ok=True)
        with open(f"fuzz/corpus/virtio_net/{name}", "wb") as f:
            f.write(data)


def frame(n):
    hdr = bytes(12)
    eth = bytes.fromhex("ffffffffffff020000000002") + b"\x08\x06"
    return hdr + eth + bytes((k % 251 for k in range(n)))


# TX: a frame in one descriptor, and one split over header and body.
s = Seed(0)
s.put(0x5000, frame(46))
s.chain([(0x5000, 12 + 14 + 46, False)])
s.put(0x5400, frame(100))
s.chain([(0x5400, 12, False), (0x5400 + 12, 14 + 100, False)])
s.write("tx-two")

# TX chains that break the rules: a writable part, shorter than the header, beyond memory,
# and checksum offload the driver did not accept.
s = Seed(0)
s.put(0x5000, frame(46))
s.chain([(0x5000, 12, False), (0x5100, 64, True)])
s.chain([(0x5000, 4, False)])
s.chain([(0xfff0_0000_0000, 1500, False)])
bad = bytearray(frame(46))
bad[0] = 1  # NEEDS_CSUM
s.put(0x5800, bytes(bad))
s.chain([(0x5800, len(bad), False)])
s.write("tx-bad")

# RX: one 2048-byte buffer takes the whole frame.
s = Seed(1)
s.chain([(0x5000, 2048, True)])
s.write("rx-one")

# RX, mergeable: four 512-byte buffers, of which the frame takes three.
s = Seed(3)
for k in range(4):
    s.chain([(0x5000 + 0x200 * k, 512, True)])
s.write("rx-mergeable")

# RX without mergeable buffers: a read-only buffer, then one too small for the frame.
s = Seed(1)
s.chain([(0x5000, 2048, False)])
s.chain([(0x5800, 600, True)])
s.write("rx-bad")
