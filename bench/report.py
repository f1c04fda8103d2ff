"""Prints the bench table (markdown) from wrk and pgbench outputs."""
import glob
import re
import sys

d, conns, secs, workers, pool = sys.argv[1:6]


def wrk(name):
    t = open("%s/%s.wrk" % (d, name)).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    v, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", t).groups()
    p99 = float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    return rps, p99, int(errs.group(1)) if errs else 0


def pgbench(name):
    t = open("%s/%s.pgbench" % (d, name)).read()
    tps = float(re.search(r"tps = ([\d.]+) \(without initial", t).group(1))
    lat = []
    for f in glob.glob("%s/pgb_%s*" % (d, name)):
        for line in open(f):
            lat.append(int(line.split()[2]))
    lat.sort()
    p99 = lat[int(len(lat) * 0.99)] / 1000.0 if lat else float("nan")
    return tps, p99


ceil = wrk("ceiling")
print("| measurement | requests/s | p99 ms | ratio to lower ceiling |")
print("|---|---:|---:|---:|")
print("| nginx `return 200` (ceiling 1) | %.0f | %.2f | |" % ceil[:2])
for name, title in (("list", "GET /api/visits (20 rows, nurse)"),
                    ("location", "POST /api/visits/:id/location"),
                    ("msg_send", "POST /api/messages"),
                    ("msg_list", "GET /api/messages/visit/:id (20 of 100)")):
    api = wrk(name)
    pg = pgbench(name)
    low = min(ceil[0], pg[0])
    print("| pgbench, same SQL, %s clients (ceiling 2) | %.0f | %.2f | |"
          % (int(workers) * int(pool), pg[0], pg[1]))
    print("| **%s** via nginx, %s conns | **%.0f** | %.2f | **%.0f%%**%s |"
          % (title, conns, api[0], api[1], 100 * api[0] / low,
             " (%d non-2xx)" % api[2] if api[2] else ""))
print()
print("%s s per run, %s workers x pool %s." % (secs, workers, pool))
