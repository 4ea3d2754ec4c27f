"""Compare two live processes' page tables (root): which of A's present pages are shared with B (same PFN),
copied (B has the address present with another PFN) or new (B has nothing there), per mapping. MiB."""
import struct, sys, collections

def maps(pid):
    out = []
    for line in open(f"/proc/{pid}/maps"):
        parts = line.split(None, 5)
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        name = parts[5].strip() if len(parts) > 5 else ""
        out.append((lo, hi, parts[1], name))
    return out

def pfns(pid, ranges):
    res = {}
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        for lo, hi, perm, name in ranges:
            if name == "[vsyscall]":
                continue
            f.seek(lo // 4096 * 8)
            data = f.read((hi - lo) // 4096 * 8)
            for i, (e,) in enumerate(struct.iter_unpack("Q", data)):
                if e >> 63:  # present
                    res[lo + i * 4096] = e & ((1 << 55) - 1)
    return res

def label(name, perm, size=0):
    if not name:
        mb = size / 2**20
        kind = ("arena1M" if size == 2**20 else "thread-stack?" if 7.9 <= mb <= 8.1 else
                "malloc-arena?" if 60 <= mb <= 64.1 else "big" if mb > 1 else "small")
        return f"anon-{kind} " + perm
    if name.startswith("/"):
        base = name.rsplit("/", 1)[-1]
        return ("so " if ".so" in base else "file ") + base + " " + perm
    return name + " " + perm

def compare(a, b):
    ma = maps(a)
    pa, pb = pfns(a, ma), pfns(b, maps(b))
    stats = collections.defaultdict(lambda: [0, 0, 0])
    for lo, hi, perm, name in ma:
        lab = label(name, perm, hi - lo)
        if lab.startswith("so ") or lab.startswith("file "):
            lab = ("so/file " + perm) if "rw" not in perm else lab
        for addr in range(lo, hi, 4096):
            if addr in pa:
                if pb.get(addr) == pa[addr]:
                    stats[lab][0] += 1
                elif addr in pb:
                    stats[lab][1] += 1
                else:
                    stats[lab][2] += 1
    return stats

if __name__ == "__main__":
    a, b = int(sys.argv[1]), int(sys.argv[2])
    st = compare(a, b)
    tot = [0, 0, 0]
    rows = sorted(st.items(), key=lambda kv: -(kv[1][1] + kv[1][2]))
    print(f"pages of {a} vs {b}: shared / copied / new (MiB)")
    for lab, (s, c, n) in rows:
        for i, v in enumerate((s, c, n)):
            tot[i] += v
        if c + n >= 16:
            print(f"  {lab[:60]:60s} {s*4/1024:7.1f} {c*4/1024:7.1f} {n*4/1024:7.1f}")
    print(f"  {'TOTAL':60s} {tot[0]*4/1024:7.1f} {tot[1]*4/1024:7.1f} {tot[2]*4/1024:7.1f}")
