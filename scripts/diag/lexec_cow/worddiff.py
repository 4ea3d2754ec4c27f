"""For pages of A copied from B (same address, other PFN): which 8-byte words differ, and for words that look
like a refcount (small int followed by a type pointer), the type's tp_name. Root only."""
import collections, struct, sys
import pagecmp

def read(pid, addr, n):
    with open(f"/proc/{pid}/mem", "rb") as f:
        f.seek(addr)
        return f.read(n)

def main(a, b, limit=6000):
    ma = pagecmp.maps(a)
    pa, pb = pagecmp.pfns(a, ma), pagecmp.pfns(b, pagecmp.maps(b))
    copied = [addr for addr in pa if addr in pb and pa[addr] != pb[addr]]
    names = {}
    def tpname(ptr):
        if ptr in names:
            return names[ptr]
        name = None
        try:
            raw = read(b, ptr + 24, 8)
            (np,) = struct.unpack("Q", raw)
            s = read(b, np, 64).split(b"\0")[0]
            if s and all(32 < c < 127 for c in s):
                name = s.decode()
        except (OSError, ValueError, OverflowError):
            pass
        names[ptr] = name
        return name
    hist = collections.Counter()  # changed words per page
    kinds = collections.Counter()
    types = collections.Counter()
    nd = 0
    for addr in copied[:limit]:
        try:
            wa, wb = read(a, addr, 4096), read(b, addr, 4096)
        except OSError:
            continue
        A = struct.unpack("512Q", wa); B = struct.unpack("512Q", wb)
        diff = [i for i in range(512) if A[i] != B[i]]
        nd += 1
        hist[min(len(diff), 64) if len(diff) < 64 else 64] += 1
        for i in diff:
            va, vb = A[i], B[i]
            if va < 1 << 24 and vb < 1 << 24 and i + 1 < 512:
                t = tpname(B[i + 1])
                if t:
                    kinds["refcnt"] += 1; types[t] += 1; continue
                kinds["small-int"] += 1
            elif va > 1 << 40 and vb > 1 << 40:
                kinds["ptr->ptr"] += 1
            else:
                kinds["other"] += 1
    print(f"copied pages {len(copied)} examined {nd}")
    print("changed words per page:", sorted(hist.items())[:20], "... >=64:", hist[64])
    print("kinds:", kinds.most_common())
    print("refcount changes by type:", types.most_common(40))

if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
