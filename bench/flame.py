#!/usr/bin/python3
"""Turns `perf script` output into a self-contained SVG flame graph (no external tools).

    perf record -F 499 -g -o perf.data -- build/tern serve -c ...   (or --call-graph dwarf)
    perf script -i perf.data -F comm,tid,ip,sym | bench/flame.py --title "..." > flame.svg

Each sample's stack is read leaf first (perf's order) and drawn root at the bottom; a
frame's width is its share of the samples. With --by-thread the thread id becomes the
first frame above the root, so that each thread's share shows (the worker loops, the
committer, the delivery threads, the events writer). Frames below --min-pct of the
samples are left out so the file stays small. The title says what was recorded; hovering
a frame shows its name, its samples and its share (the <title> of each box).
"""
import argparse
import html
import sys
import zlib


def read_stacks(lines, by_thread):
    """Yields one root-first list of frame names per sample."""
    head, frames = None, []
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip():
            if head is not None:
                yield head + list(reversed(frames))
            head, frames = None, []
            continue
        if not line[0].isspace():
            fields = line.split()
            comm = fields[0] if fields else "?"
            tid = fields[1] if by_thread and len(fields) > 1 else None
            head = [comm] + ([f"tid {tid}"] if tid else [])
            frames = []
            continue
        parts = line.split(None, 1)
        name = parts[1] if len(parts) == 2 else parts[0]
        name = name.split("+0x")[0].strip() or "[unknown]"
        frames.append(name)
    if head is not None:
        yield head + list(reversed(frames))


class Node:
    __slots__ = ("name", "count", "kids")

    def __init__(self, name):
        self.name, self.count, self.kids = name, 0, {}


def build(stacks):
    root = Node("all")
    for st in stacks:
        root.count += 1
        node = root
        for name in st:
            node = node.kids.setdefault(name, Node(name))
            node.count += 1
    return root


def depth_of(node, least):
    """Rows needed for node and the descendants that are drawn (count >= least)."""
    return 1 + max((depth_of(k, least) for k in node.kids.values() if k.count >= least),
                   default=0)


def colour(name):
    h = zlib.crc32(name.encode()) % 60
    return f"hsl({h},80%,60%)"


def render(root, title, width, min_pct, out):
    row = 16
    total = max(root.count, 1)
    height = depth_of(root, total * min_pct / 100.0) * row + 24
    out.write(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
              f'font-family="monospace">\n')
    out.write(f'<text x="4" y="14" font-size="13">{html.escape(title)} '
              f'({root.count} samples)</text>\n')

    def draw(node, x, level):
        w = width * node.count / total
        if 100.0 * node.count / total < min_pct:
            return
        y = height - (level + 1) * row
        label = html.escape(node.name)
        pct = 100.0 * node.count / total
        if w > 7 * len(node.name):
            text = label
        elif w > 30:
            text = html.escape(node.name[: int(w / 7) - 2]) + ".."
        else:
            text = ""
        out.write(f'<g><title>{label} ({node.count} samples, {pct:.1f}%)</title>'
                  f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}" '
                  f'fill="{colour(node.name)}"/>'
                  f'<text x="{x + 2:.1f}" y="{y + 12}" font-size="11">{text}</text></g>\n')
        for kid in sorted(node.kids.values(), key=lambda k: -k.count):
            draw(kid, x, level + 1)
            x += width * kid.count / total

    draw(root, 0.0, 0)
    out.write("</svg>\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--title", default="perf profile")
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--min-pct", type=float, default=0.3,
                    help="leave out frames under this share of all samples")
    ap.add_argument("--by-thread", action="store_true",
                    help="the thread id as the first frame (perf script -F comm,tid,ip,sym)")
    args = ap.parse_args()
    root = build(read_stacks(sys.stdin, args.by_thread))
    render(root, args.title, args.width, args.min_pct, sys.stdout)


if __name__ == "__main__":
    main()
