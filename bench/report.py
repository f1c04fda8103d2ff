#!/usr/bin/env python3
"""The side-by-side tables of bench/side-by-side as Markdown: the product
and the Express peer per endpoint with their ratio, the ceiling of each
read endpoint with the product's share of it, and what the list statement
costs with the size of the set.

    report.py sbs.txt ceilings.tsv costs.tsv "machine"
"""

import re
import sys


def tables(path):
    """{'product': {endpoint: (rps, p50, p90, p99)}, 'express': {...}}"""
    out, cur = {}, None
    for line in open(path, encoding='utf-8'):
        if line.startswith('== product'):
            cur = out.setdefault('product', {})
        elif line.startswith('== Express'):
            cur = out.setdefault('express', {})
        elif cur is not None:
            m = re.match(r'^(GET|POST) (.+?)\s{2,}(\d+)\s+([\d.]+)\s+([\d.]+)\s+'
                         r'([\d.]+)\s+[\d.]+\s+(\d+)\s+(\d+)\s*$', line)
            if m:
                name = f'{m.group(1)} {m.group(2)}'
                cur[name] = (int(m.group(3)), float(m.group(4)),
                             float(m.group(5)), float(m.group(6)),
                             int(m.group(7)) + int(m.group(8)))
    return out


def main():
    sbs, ceil_path, costs_path, machine = sys.argv[1:5]
    t = tables(sbs)
    ceilings = {}
    for line in open(ceil_path, encoding='utf-8'):
        name, tps, lat = line.rstrip('\n').split('\t')
        ceilings[name] = (int(tps), float(lat))

    print(f'Machine: {machine}; wrk -t2 -c64, everything on the same cores.\n')
    print('| endpoint | product req/s | Express req/s | ratio | product p99 ms '
          '| Express p99 ms | ceiling tps | share of ceiling | errors |')
    print('|---|---:|---:|---:|---:|---:|---:|---:|---:|')
    for name, (rps, _p50, _p90, p99, bad) in t.get('product', {}).items():
        e = t.get('express', {}).get(name)
        c = ceilings.get(name)
        print(f'| {name} | {rps} | {e[0] if e else "-"} | '
              f'{rps / e[0]:.2f} | {p99:.1f} | {e[3] if e else "-"} | '
              f'{c[0] if c else ""} | {f"{100 * rps / c[0]:.0f} %" if c else ""} | '
              f'{bad} |' if e else f'| {name} | {rps} | - | - | {p99} | - | | | {bad} |')

    print('\nThe list statement (generic plan, EXPLAIN ANALYZE execution time, ms):\n')
    print('| visits | role | ms |')
    print('|---:|---|---:|')
    for line in open(costs_path, encoding='utf-8'):
        parts = line.rstrip('\n').split('\t')
        if len(parts) == 3:
            print(f'| {parts[0]} | {parts[1]} | {parts[2]} |')


main()
