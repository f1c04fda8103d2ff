"""Turns the statements nginx sent (PostgreSQL's statement log) into pgbench
scripts: the same SQL text, run by pgbench over the extended protocol."""
import re
import sys

log, out = sys.argv[1], sys.argv[2]
stmts = []
lines = open(log, encoding="utf-8").read().splitlines()
for i, line in enumerate(lines):
    m = re.search(r"LOG:  execute <unnamed>: (.*)$", line)
    if not m:
        continue
    params = {}
    if i + 1 < len(lines):
        d = re.search(r"DETAIL:  parameters: (.*)$", lines[i + 1])
        if d:
            for n, v in re.findall(r"\$(\d+) = (NULL|'(?:[^']|'')*')", d.group(1)):
                params[int(n)] = v
    stmts.append((m.group(1), params))


def script(sql, params, override, head=""):
    def sub(m):
        n = int(m.group(1))
        if n in override:
            return override[n]
        v = params[n]             # a literal: constant for the whole run
        if ":" in v:
            # pgbench would read ":name" inside it as one of its variables
            v = "E" + v.replace("\\", "\\\\").replace(":", "\\x3a")
        return v
    return head + re.sub(r"\$(\d+)", sub, sql) + ";\n"


lst = [s for s in stmts if s[0].startswith("WITH f AS")]
loc = [s for s in stmts if s[0].startswith("WITH ok AS")]
msend = [s for s in stmts if s[0].startswith("WITH vis AS (SELECT v.id, b.")]
mlist = [s for s in stmts if s[0].startswith("WITH vis AS (SELECT v.id FROM")]
if not lst or not loc or not msend or not mlist:
    sys.exit("bench: could not capture the statements (see %s)" % log)

sql, params = lst[-1]
open(out + "/list.sql", "w").write(script(sql, params, {}))

sql, params = loc[-1]
head = ("\\set n random(1, 200)\n"
        "\\set lat -26.2 + random(0, 100000) / 1000000.0\n"
        "\\set lng 28.0 + random(0, 100000) / 1000000.0\n")
open(out + "/location.sql", "w").write(script(sql, params, {
    1: "('cbenchvisit0000000000' || lpad(:n::text, 4, '0'))",
    3: ":lat", 4: ":lng"}, head))

sql, params = mlist[-1]
open(out + "/msg_list.sql", "w").write(script(sql, params, {}))

sql, params = msend[-1]
open(out + "/msg_send.sql", "w").write(script(sql, params, {
    4: "('c' || substr(md5(random()::text || clock_timestamp()::text), 1, 24))"}))
