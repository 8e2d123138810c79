#!/usr/bin/env python3
"""Scenario generator for incidentd backtests: a synthetic CMDB, a replayable alert stream with
injected faults and noise, and the ground truth of what happened.

    python3 tools/scenario_gen.py --out DIR [--racks-per-site N] [--sites S] [--faults K]
                                  [--noise R] [--duration-minutes M] [--seed N]

Writes DIR/cmdb.json, DIR/alerts.jsonl, DIR/truth.json and, when maintenance faults exist,
DIR/rules.toml (maintenance windows, read on top of the default rules). See tools/README.md.

Standard library only. Deterministic: one seed gives byte-identical files (nothing depends on
set iteration order or PYTHONHASHSEED; no clock is read).

Faults are placed so that the documented correlation semantics (rules/default.toml, README
"Correlation") can reproduce the truth: two truth incidents that are active within 20 minutes of
each other never have an alerting CI in each other's 3-hop neighbourhood (upstream, downstream,
or a sibling through one non-hub parent, along the alert class's relations), and never share an
alert identity. The script asserts this and more before writing anything.
"""

import argparse
import json
import math
import random
import re
import sys
from collections import deque
from datetime import datetime, timedelta, timezone
from pathlib import Path

DAY0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=timezone.utc)

# ---------------------------------------------------------------------------------------------
# Layout constants
# ---------------------------------------------------------------------------------------------

CORES_PER_SITE = 2
RACKS_PER_AGG = 4          # a pod: 4 racks behind one aggregation switch
HOSTS_PER_RACK = 12
HYPERVISORS_PER_RACK = 4   # hosts 01-04 of every rack run ESXi
VMS_PER_HYPERVISOR = 4
RACKS_PER_DATASTORE = 2    # racks 2k-1 and 2k share datastore k (32 VMs)
DATASTORES_PER_SAN = 20
STACKS_PER_4_RACKS = 5     # application stacks (db + apps + service): 1.25 per rack

SITE_NAMES = ["Frankfurt", "Amsterdam", "Dublin", "Paris", "Madrid", "Milan", "Vienna",
              "Warsaw", "Stockholm"]
DOMAINS = ["payments", "checkout", "cart", "identity", "catalog", "search", "inventory",
           "ledger", "notify", "reporting", "shipping", "pricing", "loyalty", "reviews",
           "billing", "crm", "fraud", "tax", "returns", "support", "media", "booking", "chat",
           "maps", "analytics", "recommend", "orders", "invoicing", "warehouse", "payroll",
           "docs", "wiki", "mail", "calendar", "cms", "ads", "partner", "quotes", "claims",
           "tickets"]
DB_KINDS = ["PostgreSQL", "MySQL", "Redis", "Oracle", "MongoDB"]
APP_ROLES = {"api": "API", "web": "web front end", "worker": "worker", "batch": "batch jobs"}
CRITICALITIES = ["critical", "high", "medium", "low"]

# ---------------------------------------------------------------------------------------------
# Correlation semantics (copied from rules/default.toml and the README)
# ---------------------------------------------------------------------------------------------

NETWORK_RE = re.compile(
    r"(Host|Node|Target|VM|Hypervisor|Switch|Link|Interface|Port|Uplink)(Down|Unreachable)"
    r"|PingLoss|PacketLoss|PowerLoss|PDUDown|PDUOffline|UPSOnBattery|BMCUnreachable"
    r"|InstanceDown")
STORAGE_RE = re.compile(
    r"(Storage|SAN|Datastore|Disk|Volume|LUN|IO)"
    r"(Latency|LatencyHigh|Slow|Down|Error|Errors|Degraded)")
APP_RE = re.compile(
    r"HighLatency|ErrorRate|HTTP5xx|Exceptions|SLOBurn|ApdexLow|ResponseTime|Timeouts"
    r"|DBConnectionErrors|DatabaseDown|ReplicationLag|Deadlocks|QueryLatency|ServiceDown")
CLASS_RELS = {
    "network": ("connected_to", "powered_by", "hosted_on", "runs_on"),
    "storage": ("depends_on", "hosted_on"),
    "application": ("runs_on", "depends_on"),
}
HOPS = 3
MAX_FAN_IN = 50            # a CI with more direct dependents along the class relations is a hub
TOPOLOGY_WINDOW = 15 * 60
SAME_CI_WINDOW = 10 * 60
MARGIN = 20 * 60           # related truth incidents are kept further apart than this in time
FLAP_WINDOW = 10 * 60

NOISE_NAMES = ("DiskFull", "CPUHigh", "CertExpiring", "NTPDrift")

SEVERITY = {
    "HostUnreachable": "critical", "InstanceDown": "major", "VMDown": "major",
    "BMCUnreachable": "major", "SwitchDown": "critical", "UplinkDown": "major",
    "PDUDown": "critical", "LinkDown": "major", "HostRebooted": "info",
    "DatastoreLatency": "major", "StorageLatency": "major", "IOLatency": "minor",
    "DatabaseDown": "critical", "DBConnectionErrors": "major", "ErrorRate": "critical",
    "Exceptions": "minor", "HighLatency": "major", "SLOBurn": "critical",
    "DiskFull": "major", "CPUHigh": "warning", "CertExpiring": "warning", "NTPDrift": "minor",
}

KINDS = ["switch", "power", "storage", "database", "app", "flapping", "maintenance"]


def alert_class(name):
    hits = [c for c, rx in (("network", NETWORK_RE), ("storage", STORAGE_RE),
                            ("application", APP_RE)) if rx.fullmatch(name)]
    assert len(hits) <= 1, f"{name} matches several classes"
    return hits[0] if hits else None


def ts(sec):
    return (DAY0 + timedelta(seconds=sec)).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_ts(s):
    dt = datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    return int((dt - DAY0).total_seconds())


# ---------------------------------------------------------------------------------------------
# CMDB
# ---------------------------------------------------------------------------------------------


class Layout:
    """The CMDB plus the structure the fault builders need (racks, datastores, stacks)."""

    def __init__(self, sites, racks_per_site, rng):
        assert 1 <= sites <= 99, "--sites must be 1..99"
        assert 1 <= racks_per_site <= 255, "--racks-per-site must be 1..255"
        self.cis, self.rels = [], []
        self.racks, self.datastores, self.stacks = [], [], []
        self.runs_on, self.on = {}, {}       # workload -> targets, target -> workloads
        self.rack_of = {}                    # host / vm / tor / pdu -> rack dict
        self.bare_free = []                  # bare-metal hosts without workloads
        w = max(2, len(str(racks_per_site)))
        free_vms, free_bare = {}, {}
        for s in range(1, sites + 1):
            self._site(s, racks_per_site, w, free_vms, free_bare)
        self._workloads(sites, racks_per_site, rng, free_vms, free_bare)
        self.bare_free = [h for s in range(1, sites + 1) for h in sorted(free_bare[s])]
        self.apps = [c["id"] for c in self.cis if c["type"] == "application"]
        self.dbs = [c["id"] for c in self.cis if c["type"] == "database"]
        self.hosts = [c["id"] for c in self.cis if c["type"] == "host"]

    def ci(self, id_, type_, name, owner, criticality=None, hostname=None, ip=None):
        c = {"id": id_, "type": type_, "name": name}
        if criticality is not None:
            c["criticality"] = criticality
        c["owner_group"] = owner
        attrs = {}
        if hostname is not None:
            attrs["hostname"] = hostname
        if ip is not None:
            attrs["ip"] = ip
        if attrs:
            c["attrs"] = attrs
        self.cis.append(c)

    def rel(self, from_, type_, to):
        self.rels.append({"from": from_, "type": type_, "to": to})

    def _site(self, s, n_racks, w, free_vms, free_bare):
        site = f"site-dc{s}"
        city = SITE_NAMES[s - 1] if s <= len(SITE_NAMES) else f"site {s}"
        self.ci(site, "site", f"DC{s} {city}", "facilities")
        mgmt = f"mgmt.dc{s}.example.net"
        cores = [f"dc{s}-core-{c}" for c in range(1, CORES_PER_SITE + 1)]
        for c, cid in enumerate(cores, 1):
            self.ci(cid, "switch", cid, "network", hostname=f"{cid}.{mgmt}", ip=f"10.{s}.0.{c}")
            self.rel(cid, "located_in", site)
        n_aggs = math.ceil(n_racks / RACKS_PER_AGG)
        for a in range(1, n_aggs + 1):
            aid = f"dc{s}-agg-{a}"
            self.ci(aid, "switch", aid, "network", hostname=f"{aid}.{mgmt}",
                    ip=f"10.{s}.0.{10 + a}")
            for core in cores:
                self.rel(aid, "connected_to", core)
            self.rel(aid, "located_in", site)
        n_ds = math.ceil(n_racks / RACKS_PER_DATASTORE)
        n_san = math.ceil(n_ds / DATASTORES_PER_SAN)
        for k in range(1, n_san + 1):
            san = f"dc{s}-san-{k}"
            self.ci(san, "storage_array", f"{san} (all-flash array)", "storage",
                    hostname=f"{san}.{mgmt}", ip=f"10.{s}.0.{200 + k}")
            for core in cores:
                self.rel(san, "connected_to", core)
            self.rel(san, "located_in", site)
        ds_of = {}
        for d in range(1, n_ds + 1):
            did = f"dc{s}-ds-{d:0{w}d}"
            self.ci(did, "datastore", did, "storage")
            self.rel(did, "hosted_on", f"dc{s}-san-{(d - 1) // DATASTORES_PER_SAN + 1}")
            ds_of[d] = {"id": did, "site": s, "vms": []}
            self.datastores.append(ds_of[d])
        for a in range(1, n_aggs + 1):
            self.ci(f"dc{s}-cl-{a}", "cluster", f"dc{s}-cl-{a} (vSphere cluster)",
                    "virtualization")
        free_vms[s], free_bare[s] = [], []
        for r in range(1, n_racks + 1):
            rr = f"{r:0{w}d}"
            rk, tor = f"dc{s}-rack-{rr}", f"dc{s}-tor-{rr}"
            agg = f"dc{s}-agg-{(r - 1) // RACKS_PER_AGG + 1}"
            cluster = f"dc{s}-cl-{(r - 1) // RACKS_PER_AGG + 1}"
            pdus = [f"dc{s}-pdu-{rr}{side}" for side in "ab"]
            ds = ds_of[(r - 1) // RACKS_PER_DATASTORE + 1]
            rack = {"id": rk, "site": s, "num": r, "tor": tor, "pdus": pdus, "agg": agg,
                    "hosts": [], "hypervisors": [], "vms": {}, "ds": ds["id"]}
            self.racks.append(rack)
            self.ci(rk, "rack", rk, "facilities")
            self.rel(rk, "located_in", site)
            for i, p in enumerate(pdus):
                self.ci(p, "pdu", p, "facilities", hostname=f"{p}.{mgmt}", ip=f"10.{s}.{r}.{251 + i}")
                self.rel(p, "located_in", rk)
                self.rack_of[p] = rack
            self.ci(tor, "switch", tor, "network", hostname=f"{tor}.{mgmt}", ip=f"10.{s}.{r}.250")
            self.rel(tor, "connected_to", agg)
            for p in pdus:
                self.rel(tor, "powered_by", p)
            self.rel(tor, "located_in", rk)
            self.rack_of[tor] = rack
            for h in range(1, HOSTS_PER_RACK + 1):
                hid = f"dc{s}-h{rr}{h:02d}"
                self.ci(hid, "host", hid, "compute", hostname=f"{hid}.dc{s}.example.net",
                        ip=f"10.{s}.{r}.{h}")
                self.rel(hid, "connected_to", tor)
                for p in pdus:
                    self.rel(hid, "powered_by", p)
                self.rel(hid, "located_in", rk)
                rack["hosts"].append(hid)
                self.rack_of[hid] = rack
                if h <= HYPERVISORS_PER_RACK:
                    self.rel(hid, "member_of", cluster)
                    rack["hypervisors"].append(hid)
                else:
                    free_bare[s].append(hid)
            for hid in rack["hypervisors"]:
                h = int(hid[-2:])
                rack["vms"][hid] = []
                for v in range(1, VMS_PER_HYPERVISOR + 1):
                    vid = f"dc{s}-vm-{rr}{h:02d}-{v}"
                    self.ci(vid, "vm", vid, "virtualization", hostname=f"{vid}.dc{s}.example.net",
                            ip=f"10.{100 + s}.{r}.{h * 10 + v}")
                    self.rel(vid, "hosted_on", hid)
                    self.rel(vid, "depends_on", ds["id"])
                    rack["vms"][hid].append(vid)
                    ds["vms"].append(vid)
                    self.rack_of[vid] = rack
                    free_vms[s].append(vid)

    def _workloads(self, sites, n_racks, rng, free_vms, free_bare):
        def take(lst):
            i = rng.randrange(len(lst))
            lst[i], lst[-1] = lst[-1], lst[i]
            return lst.pop()

        def place(wid, site, bare_ok):
            if bare_ok and free_bare[site] and rng.random() < 0.4:
                target = take(free_bare[site])
            elif free_vms[site]:
                target = take(free_vms[site])
            else:  # everything taken (tiny CMDBs): share a VM
                target = rng.choice(sorted(t for t in self.on if "-vm-" in t
                                           and t.startswith(f"dc{site}-")))
            self.runs_on.setdefault(wid, []).append(target)
            self.on.setdefault(target, []).append(wid)

        n_stacks = math.ceil(sites * n_racks * STACKS_PER_4_RACKS / 4)
        all_sites = list(range(1, sites + 1))
        rels_later, services = [], []
        for i in range(n_stacks):
            dom = DOMAINS[i % len(DOMAINS)]
            name = dom if i < len(DOMAINS) else f"{dom}{i // len(DOMAINS) + 1}"
            team = f"{dom}-team"
            db = f"db-{name}-01"
            self.ci(db, "database", f"{name} {rng.choice(DB_KINDS)}", team)
            place(db, rng.choice(all_sites), bare_ok=True)
            roles = ["api"] + [r for r, p in (("web", 0.7), ("worker", 0.5), ("batch", 0.25))
                               if rng.random() < p]
            apps = {}
            for role in roles:
                aid = f"app-{name}-{role}"
                apps[role] = aid
                self.ci(aid, "application", f"{name} {APP_ROLES[role]}", team)
                for site in sorted(rng.sample(all_sites, min(2, sites))):
                    place(aid, site, bare_ok=False)
            rels_later.append((apps["api"], "depends_on", db))
            if "web" in apps:
                rels_later.append((apps["web"], "depends_on", apps["api"]))
            if "worker" in apps:
                rels_later.append((apps["worker"], "depends_on", db))
                if rng.random() < 0.5:
                    rels_later.append((apps["worker"], "depends_on", apps["api"]))
            if "batch" in apps:
                rels_later.append((apps["batch"], "depends_on", db))
            if self.stacks and rng.random() < 0.25:
                other = rng.choice(self.stacks)
                rels_later.append((apps["api"], "depends_on", other["apps"]["api"]))
            svc = f"svc-{name}"
            crit = rng.choices(CRITICALITIES, weights=[2, 3, 3, 2])[0]
            deps = [apps.get("web", apps["api"])]
            if "worker" in apps and rng.random() < 0.5:
                deps.append(apps["worker"])
            services.append((svc, f"{name.capitalize()} service", crit, team, deps))
            self.stacks.append({"name": name, "db": db, "apps": apps, "service": svc})
        for svc, title, crit, team, _ in services:
            self.ci(svc, "service", title, team, criticality=crit)
        for c in self.cis:
            for target in self.runs_on.get(c["id"], []):
                self.rel(c["id"], "runs_on", target)
        for f, t, to in rels_later:
            self.rel(f, t, to)
        for svc, _, _, _, deps in services:
            for d in deps:
                self.rel(svc, "depends_on", d)


class Topo:
    """Indexed CMDB graph with the engine's neighbourhood semantics."""

    def __init__(self, cis, rels):
        self.cis = {c["id"]: c for c in cis}
        self.up = {i: [] for i in self.cis}
        self.down = {i: [] for i in self.cis}
        for r in rels:
            self.up[r["from"]].append((r["type"], r["to"]))
            self.down[r["to"]].append((r["type"], r["from"]))
        self.by_hostname = {}
        for c in cis:
            hn = c.get("attrs", {}).get("hostname")
            if hn:
                self.by_hostname[hn] = c["id"]
        self._nb, self._fan = {}, {}

    def fan_in(self, ci, cls):
        key = (ci, cls)
        if key not in self._fan:
            rels = CLASS_RELS[cls]
            self._fan[key] = sum(1 for t, _ in self.down[ci] if t in rels)
        return self._fan[key]

    def is_hub(self, ci, cls):
        return self.fan_in(ci, cls) > MAX_FAN_IN

    def neighborhood(self, start, cls):
        """CIs related to `start` for an alert of class `cls`: up to HOPS upstream, up to HOPS
        downstream, and siblings through one non-hub direct parent. Hubs are reached but not
        walked through (start itself always is)."""
        key = (start, cls)
        if key in self._nb:
            return self._nb[key]
        rels = CLASS_RELS[cls]
        found = set()
        for edges in (self.up, self.down):
            seen = {start}
            queue = deque([(start, 0)])
            while queue:
                v, h = queue.popleft()
                if h >= HOPS or (v != start and self.is_hub(v, cls)):
                    continue
                for t, o in edges[v]:
                    if t in rels and o not in seen:
                        seen.add(o)
                        found.add(o)
                        queue.append((o, h + 1))
        for t, parent in self.up[start]:
            if t not in rels or self.is_hub(parent, cls):
                continue
            for t2, x in self.down[parent]:
                if t2 in rels:
                    found.add(x)
        found.discard(start)
        self._nb[key] = frozenset(found)
        return self._nb[key]

    def downstream(self, start, cls, hops=HOPS):
        """{ci: hops} of CIs depending on `start` within `hops` along the class relations
        (hubs other than start not walked through), in BFS order."""
        rels = CLASS_RELS[cls]
        found = {}
        queue = deque([(start, 0)])
        while queue:
            v, h = queue.popleft()
            if h >= hops or (v != start and self.is_hub(v, cls)):
                continue
            for t, o in self.down[v]:
                if t in rels and o not in found and o != start:
                    found[o] = h + 1
                    queue.append((o, h + 1))
        return found

    def upstream_closure(self, start, rels):
        seen, queue = set(), deque([start])
        while queue:
            n = queue.popleft()
            for t, m in self.up[n]:
                if t in rels and m not in seen:
                    seen.add(m)
                    queue.append(m)
        return seen

    def parents(self, ci, cls="network"):
        rels = CLASS_RELS[cls]
        return [to for t, to in self.up[ci] if t in rels]

    def resolve(self, line):
        if line.get("ci"):
            return line["ci"] if line["ci"] in self.cis else None
        labels = line.get("labels", {})
        if "hostname" in labels:
            return self.by_hostname.get(labels["hostname"])
        if "instance" in labels:
            return self.by_hostname.get(labels["instance"].rsplit(":", 1)[0])
        return None


def check_cmdb(layout, topo):
    ids = [c["id"] for c in layout.cis]
    assert len(ids) == len(set(ids)), "duplicate CI id"
    for key in ("hostname", "ip"):
        vals = [c["attrs"][key] for c in layout.cis if key in c.get("attrs", {})]
        assert len(vals) == len(set(vals)), f"duplicate {key} attribute"
    for c in layout.cis:
        if c["type"] in ("host", "vm"):
            assert "hostname" in c.get("attrs", {}), c
    seen = set()
    for r in layout.rels:
        assert r["from"] in topo.cis and r["to"] in topo.cis, r
        assert r["from"] != r["to"], r
        k = (r["from"], r["type"], r["to"])
        assert k not in seen, f"duplicate relation {k}"
        seen.add(k)
    indeg = {i: 0 for i in ids}
    for r in layout.rels:
        indeg[r["to"]] += 1
    queue = deque(i for i in ids if indeg[i] == 0)
    done = 0
    while queue:
        n = queue.popleft()
        done += 1
        for _, m in topo.up[n]:
            indeg[m] -= 1
            if indeg[m] == 0:
                queue.append(m)
    assert done == len(ids), "the CMDB has a cycle"
    # The parents faults hang off are not hubs, so their symptoms stay reachable.
    for rack in layout.racks:
        for ci in [rack["tor"]] + rack["pdus"] + rack["hosts"]:
            assert not topo.is_hub(ci, "network"), ci
    for ds in layout.datastores:
        assert not topo.is_hub(ds["id"], "storage"), ds["id"]
        assert ds["vms"], ds["id"]


# ---------------------------------------------------------------------------------------------
# Alert plans: one per truth incident (fault or noise alert)
# ---------------------------------------------------------------------------------------------


class Plan:
    def __init__(self, kind, order_hint):
        self.kind = kind
        self.label = None
        self.root_ci = None
        self.noise_name = None
        self.defs = {}        # dedup key -> alert definition (without status/received_at)
        self.ci_of = {}       # dedup key -> resolved CI
        self.first = {}       # dedup key -> first firing time
        self.events = []      # (t, index, line)
        self.maint = None     # (host, window start, window end)
        self.suppressed = False
        self.order_hint = order_hint

    # Derived sets, computed once the plan is complete.
    def finish(self, topo):
        times = [t for t, _, _ in self.events]
        self.start, self.end = min(times), max(times)
        self.idents = {(d["source"], d["name"], self.ci_of[k]) for k, d in self.defs.items()}
        self.all_cis = {self.ci_of[k] for k in self.defs}
        self.cis, self.reach, self.nontopo = set(), set(), []
        if self.suppressed:
            return self
        last = {}
        for t, _, line in self.events:
            last[line["dedup_key"]] = t
        for k, d in self.defs.items():
            ci = self.ci_of[k]
            cls = alert_class(d["name"])
            if cls is None:
                self.nontopo.append((ci, self.first[k], last[k]))
            else:
                self.cis.add(ci)
                self.reach.add(ci)
                self.reach |= topo.neighborhood(ci, cls)
        return self

    def overlaps(self, other, margin=MARGIN):
        return self.start < other.end + margin and other.start < self.end + margin


def conflict(a, b):
    """Why plans a and b could not both be reproduced as separate incidents, or None."""
    if a.idents & b.idents:
        return "same alert identity"
    for p, q in ((a, b), (b, a)):
        if p.maint:
            host, ws, we = p.maint
            if host in q.all_cis and q.start < we + MARGIN and ws < q.end + MARGIN:
                return "alert on a CI under maintenance"
    if not a.overlaps(b):
        return None
    if a.cis & b.reach or b.cis & a.reach:
        return "related within 3 hops"
    for ci, s1, e1 in a.nontopo:
        for ci2, s2, e2 in b.nontopo:
            if ci == ci2 and s1 < e2 + MARGIN and s2 < e1 + MARGIN:
                return "non-topology alerts on one CI"
    return None


class Generator:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.layout = Layout(args.sites, args.racks_per_site, self.rng)
        self.topo = Topo(self.layout.cis, self.layout.rels)
        check_cmdb(self.layout, self.topo)
        self.duration = args.duration_minutes * 60
        self.faults, self.noise = [], []

    # -- alert definition and emission ---------------------------------------------------------

    def define(self, plan, source, name, ci, summary, labels=None, noci_ok=True,
               severity=None, suffix=""):
        """Defines one alert identity on `ci`; None if the identity is taken (in this plan;
        other plans are checked by `conflict`)."""
        if any(d["source"] == source and d["name"] == name and plan.ci_of[k] == ci
               for k, d in plan.defs.items()):
            return None
        c = self.topo.cis[ci]
        labels = dict(labels or {})
        hostname = c.get("attrs", {}).get("hostname")
        line_ci = ci
        if c["type"] in ("host", "vm") and source.startswith("prometheus"):
            labels["instance"] = f"{hostname}:9100"
            labels["job"] = "node"
        if noci_ok and c["type"] in ("host", "vm") and self.rng.random() < 0.3:
            line_ci = None
            if not source.startswith("prometheus"):
                labels["hostname"] = hostname
        key = f"{source}:{line_ci or hostname}:{name}{suffix}"
        assert key not in plan.defs, key
        d = {"source": source, "name": name}
        if line_ci is not None:
            d["ci"] = line_ci
        d["severity"] = severity or SEVERITY[name]
        d["summary"] = summary
        d["labels"] = labels
        d["dedup_key"] = key
        plan.defs[key] = d
        plan.ci_of[key] = ci
        return key

    def emit(self, plan, key, t, status="firing"):
        d = plan.defs[key]
        line = {k: d[k] for k in ("source", "name", "ci") if k in d}
        line.update(severity=d["severity"], status=status, summary=d["summary"],
                    labels=d["labels"], dedup_key=key, received_at=ts(t))
        plan.events.append((t, len(plan.events), line))
        if status == "firing":
            plan.first.setdefault(key, t)

    def fire(self, plan, key, start, until, resolve_p=0.85):
        """Fires at `start`, repeats every 30-90 s while before `until`, then (usually)
        resolves."""
        t = start
        last = start
        while t < until or t == start:
            self.emit(plan, key, t)
            last = t
            t += self.rng.randint(30, 90)
        if self.rng.random() < resolve_p:
            self.emit(plan, key, max(until, last + 1) + self.rng.randint(0, 60), "resolved")

    def root_position(self):
        r = self.rng.random()
        return "last" if r < 0.6 else ("first" if r < 0.8 else "middle")

    def root_delays(self, symptom_delays, n_roots):
        """Delays of the root alerts relative to the symptoms: last (p 0.6), first or middle."""
        pos = self.root_position()
        lo, hi = min(symptom_delays), max(symptom_delays)
        if pos == "middle" and hi - lo < 4:
            pos = "last"
        if pos == "last":
            t = hi + self.rng.randint(3, 12)
        elif pos == "first":
            t = self.rng.randint(0, max(0, lo - n_roots * 2))
        else:
            t = self.rng.randint(lo + 1, hi - 1)
        out = [t]
        for _ in range(n_roots - 1):
            step = 1 if pos == "first" else self.rng.randint(1, 10)
            out.append(out[-1] + step)
        return pos, out

    def host_alert(self, plan, host, s, rack_id, options):
        """HostUnreachable (zabbix) or InstanceDown (prometheus) on a host or VM."""
        for source, name in options:
            if name == "HostUnreachable":
                summary = f"{host} is unreachable for 30s (ICMP ping)"
                labels = {"check": "icmp-ping", "rack": rack_id}
            elif name == "InstanceDown":
                summary = f"{host}: node exporter target down for more than 1 minute"
                labels = {}
            elif name == "VMDown":
                summary = f"{host}: VM heartbeat lost"
                labels = {"cluster": f"dc{s}-cl-{(self.layout.rack_of[host]['num'] - 1) // RACKS_PER_AGG + 1}"}
            else:
                raise AssertionError(name)
            k = self.define(plan, source, name, host, summary, labels)
            if k:
                return k
        return None

    # -- faults -------------------------------------------------------------------------------

    def _schedule(self, plan, items, t0, end):
        for key, delay in items:
            until = max(t0 + delay + 1, end + self.rng.randint(-30, 30))
            self.fire(plan, key, t0 + delay, until)

    def fault_switch(self, rack, t0, dur):
        rng, s, plan = self.rng, rack["site"], Plan("switch", 0)
        end = t0 + dur
        items, first = [], {}
        # A dead top-of-rack switch cuts off most of its rack; a few hosts may be idle or
        # unmonitored.
        n = len(rack["hosts"])
        hosts = sorted(rng.sample(rack["hosts"], rng.randint(max(3, n * 3 // 4), n)))
        for h in hosts:
            opts = [(f"zabbix-dc{s}", "HostUnreachable"), (f"prometheus-dc{s}", "InstanceDown")]
            if rng.random() < 0.3:
                opts.reverse()
            k = self.host_alert(plan, h, s, rack["id"], opts)
            if k:
                first[h] = rng.randint(6, 50)
                items.append((k, first[h]))
        for h in hosts:
            if h not in rack["vms"] or h not in first:
                continue
            for vm in sorted(rng.sample(rack["vms"][h], rng.randint(2, VMS_PER_HYPERVISOR))):
                opts = [(f"vcenter-dc{s}", "VMDown"), (f"prometheus-dc{s}", "InstanceDown")]
                if rng.random() < 0.5:
                    opts.reverse()
                k = self.host_alert(plan, vm, s, rack["id"], opts)
                if k:
                    first[vm] = first[h] + rng.randint(5, 25)
                    items.append((k, first[vm]))
        self._workload_alerts(plan, sorted(first, key=lambda c: (first[c], c)), first, items)
        roots = []
        names = rng.choice([["SwitchDown"], ["SwitchDown"], ["UplinkDown"],
                            ["SwitchDown", "UplinkDown"]])
        tor = rack["tor"]
        for n in names:
            if n == "SwitchDown":
                k = self.define(plan, f"snmp-dc{s}", n, tor, f"{tor} does not answer SNMP polls",
                                {"check": "snmp-poll"})
            else:
                port = f"Ethernet1/{(rack['num'] - 1) % RACKS_PER_AGG + 1}"
                k = self.define(plan, f"syslog-dc{s}", n, tor,
                                f"{rack['agg']} {port}: link to {tor} down",
                                {"device": rack["agg"], "ifname": port})
            roots.append(k)
        if not items:
            return None
        _, delays = self.root_delays([d for _, d in items], len(roots))
        items += list(zip(roots, delays))
        plan.root_ci = tor
        self._schedule(plan, items, t0, end)
        return plan

    def _workload_alerts(self, plan, targets, first, items):
        """Application-class symptoms of workloads running on alerting hosts/VMs."""
        rng = self.rng
        done = set()
        for target in targets:
            for w in self.layout.on.get(target, []):
                if w in done:
                    continue
                done.add(w)
                team = self.topo.cis[w]["owner_group"]
                if self.topo.cis[w]["type"] == "database":
                    k = self.define(plan, "prometheus", "DatabaseDown", w,
                                    f"{w}: not accepting connections", {"team": team})
                else:
                    opts = [("prometheus", "ErrorRate", "5xx ratio above 5% for 2m"),
                            ("pingdom", "HighLatency", "p99 latency above 2s for 2m")]
                    if rng.random() < 0.5:
                        opts.reverse()
                    k = None
                    for src, name, summ in opts:
                        k = self.define(plan, src, name, w, f"{w}: {summ}",
                                        {"team": team, "env": "prod"})
                        if k:
                            break
                if k:
                    items.append((k, first[target] + rng.randint(5, 25)))

    def fault_power(self, rack, t0, dur):
        rng, s, plan = self.rng, rack["site"], Plan("power", 0)
        end = t0 + dur
        items, first = [], {}
        hosts = sorted(rng.sample(rack["hosts"], rng.randint(6, HOSTS_PER_RACK)))
        for h in hosts:
            opts = [(f"zabbix-dc{s}", "HostUnreachable"), (f"prometheus-dc{s}", "InstanceDown")]
            if rng.random() < 0.3:
                opts.reverse()
            k = self.host_alert(plan, h, s, rack["id"], opts)
            if k:
                first[h] = rng.randint(6, 50)
                items.append((k, first[h]))
        for h in sorted(rng.sample(sorted(first), min(len(first), rng.randint(2, 5)))):
            k = self.define(plan, f"ipmi-dc{s}", "BMCUnreachable", h,
                            f"{h}: BMC does not answer IPMI",
                            {"bmc": f"{h}-bmc.oob.dc{s}.example.net"}, noci_ok=False)
            if k:
                items.append((k, first[h] + rng.randint(3, 20)))
        for h in hosts:
            if h not in rack["vms"] or h not in first:
                continue
            for vm in sorted(rng.sample(rack["vms"][h], rng.randint(1, 3))):
                opts = [(f"vcenter-dc{s}", "VMDown"), (f"prometheus-dc{s}", "InstanceDown")]
                if rng.random() < 0.5:
                    opts.reverse()
                k = self.host_alert(plan, vm, s, rack["id"], opts)
                if k:
                    items.append((k, first[h] + rng.randint(5, 25)))
        tor = rack["tor"]
        k = self.define(plan, f"snmp-dc{s}", "SwitchDown", tor, f"{tor} does not answer SNMP polls",
                        {"check": "snmp-poll"})
        if k:
            items.append((k, rng.randint(10, 60)))
        if not items:
            return None
        pdus = list(rack["pdus"])
        rng.shuffle(pdus)
        roots = []
        for p in pdus:
            roots.append(self.define(plan, f"snmp-dc{s}", "PDUDown", p,
                                     f"{p}: input power lost, all outlets off",
                                     {"feed": p[-1].upper()}))
        pos, delays = self.root_delays([d for _, d in items], 2)
        if pos == "first":
            # Two PDUs before any symptom would be two unrelated incidents under the rules (a
            # shared symptom never merges two causes): the second PDU's alert (polled, not
            # trapped) arrives after the first symptom, and then joins as related.
            lo = min(d for _, d in items)
            delays[1] = lo + rng.randint(1, 20)
        delays[1] = delays[0] + max(1, delays[1] - delays[0])
        items += list(zip(roots, delays))
        plan.root_ci = pdus[0]  # the PDU whose alert arrives first
        self._schedule(plan, items, t0, end)
        return plan

    def fault_storage(self, ds, t0, dur):
        rng, s, plan = self.rng, ds["site"], Plan("storage", 0)
        end = t0 + dur
        items = []
        # Latency on a datastore is felt by most VMs on it.
        n = len(ds["vms"])
        vms = sorted(rng.sample(ds["vms"], rng.randint(min(n, max(3, n // 2)), n)))
        for vm in vms:
            opts = [(f"prometheus-dc{s}", "virtual disk await above 50 ms for 5m"),
                    (f"vcenter-dc{s}", "virtual disk latency above 50 ms")]
            if rng.random() < 0.5:
                opts.reverse()
            for src, summ in opts:
                k = self.define(plan, src, "IOLatency", vm, f"{vm}: {summ}",
                                {"datastore": ds["id"]})
                if k:
                    items.append((k, rng.randint(5, 90)))
                    break
        if not items:
            return None
        did = ds["id"]
        san = self.topo.parents(did, "storage")[0]
        roots = [self.define(plan, f"vcenter-dc{s}", "DatastoreLatency", did,
                             f"{did}: average device latency 45 ms", {"array": san})]
        if rng.random() < 0.35:
            roots.append(self.define(plan, f"san-dc{s}", "StorageLatency", did,
                                     f"{san} LUN backing {did}: read latency 48 ms (threshold 20 ms)",
                                     {"array": san}))
        _, delays = self.root_delays([d for _, d in items], len(roots))
        items += list(zip(roots, delays))
        plan.root_ci = did
        self._schedule(plan, items, t0, end)
        return plan

    def fault_database(self, db, t0, dur):
        rng, plan = self.rng, Plan("database", 0)
        end = t0 + dur
        items = []
        down = self.topo.downstream(db, "application")
        apps1 = [c for c, h in down.items() if h == 1 and self.topo.cis[c]["type"] == "application"]
        apps2 = [c for c, h in down.items() if h == 2 and self.topo.cis[c]["type"] == "application"]
        svcs = [c for c, h in down.items() if self.topo.cis[c]["type"] == "service"]
        if not apps1:
            return None
        for a in sorted(rng.sample(apps1, min(len(apps1), 5))):
            team = self.topo.cis[a]["owner_group"]
            k = self.define(plan, "inspector", "DBConnectionErrors", a,
                            f"{a}: connection errors to {db}", {"team": team, "env": "prod"})
            if k:
                items.append((k, rng.randint(8, 40)))
        for a in sorted(rng.sample(apps2, min(len(apps2), 3))):
            team = self.topo.cis[a]["owner_group"]
            k = self.define(plan, "prometheus", "ErrorRate", a,
                            f"{a}: 5xx ratio above 5% for 2m", {"team": team, "env": "prod"})
            if k:
                items.append((k, rng.randint(30, 70)))
        for sv in sorted(rng.sample(svcs, min(len(svcs), 3))):
            k = self.slo_burn(plan, sv)
            if k:
                items.append((k, rng.randint(70, 110)))
        if not items:
            return None
        root = self.define(plan, "prometheus", "DatabaseDown", db, f"{db}: not accepting connections",
                           {"team": self.topo.cis[db]["owner_group"]})
        _, delays = self.root_delays([d for _, d in items], 1)
        items.append((root, delays[0]))
        plan.root_ci = db
        self._schedule(plan, items, t0, end)
        return plan

    def slo_burn(self, plan, svc):
        c = self.topo.cis[svc]
        sev = "critical" if c["criticality"] in ("critical", "high") else "major"
        rate = self.rng.randint(4, 16)
        return self.define(plan, "slo-monitor", "SLOBurn", svc,
                           f"{svc} availability SLO: {rate}x burn rate over 1h",
                           {"slo": f"{svc[4:]}-availability", "window": "1h"}, severity=sev)

    def fault_app(self, app, t0, dur):
        rng, plan = self.rng, Plan("app", 0)
        end = t0 + dur
        team = self.topo.cis[app]["owner_group"]
        items = []
        for src, name, summ in (("prometheus", "ErrorRate", "5xx ratio above 5% for 2m"),
                                ("inspector", "Exceptions", "NullPointerException rate 40/min"),
                                ("pingdom", "HighLatency", "p99 latency above 2s for 2m")):
            k = self.define(plan, src, name, app, f"{app}: {summ}", {"team": team, "env": "prod"})
            items.append((k, rng.randint(0, 90)))
        svcs = [c for c in self.topo.downstream(app, "application")
                if self.topo.cis[c]["type"] == "service"]
        if svcs and rng.random() < 0.7:
            k = self.slo_burn(plan, rng.choice(sorted(svcs)))
            items.append((k, rng.randint(60, 120)))
        plan.root_ci = app
        self._schedule(plan, items, t0, end)
        return plan

    def fault_flapping(self, host, t0, dur):
        rng, plan = self.rng, Plan("flapping", 0)
        s = self.layout.rack_of[host]["site"]
        ifname = rng.choice(["eno1", "eno2", "ens1f0", "ens1f1"])
        k = self.define(plan, f"zabbix-dc{s}", "LinkDown", host,
                        f"{host}: interface {ifname} (bond0 member) is down",
                        {"ifname": ifname, "bond": "bond0"}, suffix=f":{ifname}")
        n = rng.randint(5, 10)
        cycle = 560 // n
        t = t0
        for _ in range(n):
            down = rng.randint(max(20, int(cycle * 0.35)), max(21, int(cycle * 0.65)))
            self.emit(plan, k, t)
            rep = t + rng.randint(30, 90)
            while rep < t + down:
                self.emit(plan, k, rep)
                rep += rng.randint(30, 90)
            self.emit(plan, k, t + down, "resolved")
            t += cycle
        plan.root_ci = host
        return plan

    def fault_maintenance(self, host, t0, dur):
        rng, plan = self.rng, Plan("maintenance", 0)
        s = self.layout.rack_of[host]["site"]
        rack = self.layout.rack_of[host]["id"]
        end = t0 + dur
        k = self.define(plan, f"ipmi-dc{s}", "BMCUnreachable", host, f"{host}: BMC does not answer IPMI",
                        {"bmc": f"{host}-bmc.oob.dc{s}.example.net"}, noci_ok=False)
        self.fire(plan, k, t0 + rng.randint(0, 60), t0 + rng.randint(120, 240), resolve_p=1)
        k = self.host_alert(plan, host, s, rack, [(f"zabbix-dc{s}", "HostUnreachable")])
        self.fire(plan, k, t0 + rng.randint(60, 180), end, resolve_p=1)
        k = self.host_alert(plan, host, s, rack, [(f"prometheus-dc{s}", "InstanceDown")])
        self.fire(plan, k, t0 + rng.randint(60, 180), end, resolve_p=1)
        k = self.define(plan, f"zabbix-dc{s}", "HostRebooted", host,
                        f"{host}: system uptime is below 5 minutes", {"check": "uptime"})
        self.emit(plan, k, end + rng.randint(60, 120))
        last = max(t for t, _, _ in plan.events)
        ws = (t0 - rng.randint(60, 600)) // 300 * 300
        we = -(-(last + rng.randint(120, 900)) // 300) * 300
        plan.maint = (host, ws, we)
        plan.suppressed = True
        plan.root_ci = host
        return plan

    # -- placement ----------------------------------------------------------------------------

    def try_fault(self, kind):
        rng, lay = self.rng, self.layout
        dur = rng.randint(5, 20) * 60
        if kind == "flapping":
            dur = 10 * 60
        dur = min(dur, max(60, self.duration - 180))
        t0 = rng.randint(0, max(0, self.duration - dur - 60))
        if kind == "switch":
            return self.fault_switch(rng.choice(lay.racks), t0, dur)
        if kind == "power":
            return self.fault_power(rng.choice(lay.racks), t0, dur)
        if kind == "storage":
            return self.fault_storage(rng.choice(lay.datastores), t0, dur)
        if kind == "database":
            return self.fault_database(rng.choice(lay.dbs), t0, dur)
        if kind == "app":
            return self.fault_app(rng.choice(lay.apps), t0, dur)
        if kind == "flapping":
            return self.fault_flapping(rng.choice(lay.hosts), t0, dur)
        if kind == "maintenance":
            if not lay.bare_free:
                return None
            return self.fault_maintenance(rng.choice(lay.bare_free), t0, dur)
        raise AssertionError(kind)

    def accept(self, plan):
        if plan is None:
            return False
        plan.finish(self.topo)
        placed = self.faults + self.noise
        if any(conflict(plan, p) for p in placed):
            return False
        return True

    def place_faults(self):
        for i in range(self.args.faults):
            kinds = KINDS[i % len(KINDS):] + KINDS[:i % len(KINDS)]
            for kind in kinds:  # the round-robin kind first, the others as a fallback
                for _ in range(300):
                    plan = self.try_fault(kind)
                    if self.accept(plan):
                        plan.order_hint = len(self.faults)
                        self.faults.append(plan)
                        break
                else:
                    continue
                if kind != kinds[0]:
                    print(f"note: fault {i + 1}: no room for a {kinds[0]} fault, "
                          f"placed a {kind} fault instead", file=sys.stderr)
                break
            else:
                sys.exit(f"could not place fault {i + 1} of {self.args.faults} without "
                         "ambiguity; use fewer faults, more racks or a longer duration")

    # -- noise --------------------------------------------------------------------------------

    def racks_of(self, plan):
        out = []
        for ci in sorted(plan.all_cis):
            targets = [ci]
            if self.topo.cis[ci]["type"] in ("application", "database"):
                targets = self.layout.runs_on.get(ci, [])
            elif self.topo.cis[ci]["type"] == "service":
                targets = []
            elif self.topo.cis[ci]["type"] == "datastore":
                targets = [v for d in self.layout.datastores if d["id"] == ci for v in d["vms"]]
            for t in targets:
                r = self.layout.rack_of.get(t)
                if r and r not in out:
                    out.append(r)
        return out

    def try_noise(self, anchor):
        rng, lay, topo = self.rng, self.layout, self.topo
        t = rng.randint(max(0, anchor.start - 60), anchor.end)
        dur = rng.randint(2, 10) * 60
        plan = Plan("noise", 0)
        what = rng.choices(["near", "far-host", "app"], weights=[5, 3, 2])[0]
        if what == "near":
            racks = self.racks_of(anchor)
            apps = sorted(c for c in anchor.all_cis
                          if topo.cis[c]["type"] in ("application", "database"))
            cands = []
            for r in racks:
                cands += r["hosts"] + [v for h in r["hypervisors"] for v in r["vms"][h]]
            cands += apps
            if not cands:
                return None
            ci = rng.choice(cands)
            typ = topo.cis[ci]["type"]
            s = lay.rack_of[ci]["site"] if ci in lay.rack_of else None
            if typ == "host":
                name = rng.choice(["DiskFull", "NTPDrift", "CPUHigh"])
            elif typ == "vm":
                name = rng.choice(["DiskFull", "CPUHigh"])
            else:
                name = rng.choice(["CertExpiring", "CPUHigh"] if typ == "application"
                                  else ["DiskFull", "CPUHigh"])
            summary, labels = {
                "DiskFull": ("/var is 97% full", {"mount": "/var"}),
                "NTPDrift": ("clock offset 1.8 s from the NTP pool", {"check": "ntp"}),
                "CPUHigh": ("CPU above 95% for 15m", {"check": "cpu"}),
                "CertExpiring": ("TLS certificate expires in 6 days", {"probe": "https"}),
            }[name]
            if typ in ("host", "vm"):
                source = rng.choice([f"zabbix-dc{s}", f"prometheus-dc{s}"])
            else:
                source = "blackbox-probe" if name == "CertExpiring" else "prometheus"
            k = self.define(plan, source, name, ci, f"{ci}: {summary}", labels)
        elif what == "far-host":
            site = rng.choice(sorted({r["site"] for r in self.racks_of(anchor)}) or
                              list(range(1, self.args.sites + 1)))
            racks = [r for r in lay.racks if r["site"] == site]
            rack = rng.choice(racks)
            ci = rng.choice(rack["hosts"])
            k = self.host_alert(plan, ci, site, rack["id"], [(f"zabbix-dc{site}", "HostUnreachable")])
        else:
            ci = rng.choice(lay.apps)
            team = topo.cis[ci]["owner_group"]
            k = self.define(plan, "pingdom", "HighLatency", ci,
                            f"{ci}: p99 latency above 2s for 2m", {"team": team, "env": "prod"},
                            severity="minor")
        if k is None:
            return None
        self.fire(plan, k, t, t + dur, resolve_p=0.7)
        plan.root_ci = ci
        plan.noise_name = plan.defs[k]["name"]
        plan.finish(topo)
        if what == "far-host" and not self.far_enough(ci, plan):
            return None
        return plan

    def active_alerting(self, plan):
        """Topology-alerting CIs of faults active around `plan` (with the margin)."""
        out = set()
        for f in self.faults:
            if not f.suppressed and f.overlaps(plan):
                out |= f.cis
        return out

    def far_enough(self, host, plan):
        """A noise host must be in another rack than any CI alerting in an active fault, behind a
        healthy ToR and PDUs that are not a direct parent of an alerting CI."""
        alerting = self.active_alerting(plan)
        rack = self.layout.rack_of[host]
        busy_racks = {self.layout.rack_of[c]["id"] for c in alerting if c in self.layout.rack_of}
        busy_parents = set(alerting)
        for c in alerting:
            busy_parents |= set(self.topo.parents(c))
        if rack["id"] in busy_racks:
            return False
        return not ({rack["tor"]} | set(rack["pdus"])) & busy_parents

    def place_noise(self):
        for anchor in list(self.faults):
            for j in range(self.args.noise):
                for _ in range(300):
                    plan = self.try_noise(anchor)
                    if plan is not None and not any(conflict(plan, p)
                                                    for p in self.faults + self.noise):
                        plan.order_hint = len(self.faults) + len(self.noise)
                        self.noise.append(plan)
                        break
                else:
                    print(f"note: no room for noise alert {j + 1} near a {anchor.kind} fault",
                          file=sys.stderr)

    # -- output -------------------------------------------------------------------------------

    def run(self):
        self.place_faults()
        self.place_noise()
        order = lambda p: (p.start, p.order_hint)
        for i, p in enumerate(sorted(self.faults, key=order), 1):
            p.label = f"f{i:03d}-{p.kind}"
        for i, p in enumerate(sorted(self.noise, key=order), 1):
            p.label = f"n{i:03d}-noise"
        plans = sorted(self.faults + self.noise, key=order)
        events = []
        for p in plans:
            for t, idx, line in p.events:
                events.append((t, p.order_hint, idx, line))
        events.sort(key=lambda e: e[:3])
        lines = [e[3] for e in events]
        truth = {"incidents": [], "suppressed": []}
        for p in plans:
            keys = sorted(p.defs, key=lambda k: (p.first.get(k, 0), k))
            if p.suppressed:
                truth["suppressed"] += keys
            else:
                truth["incidents"].append({"label": p.label, "kind": p.kind,
                                           "root_ci": p.root_ci, "alerts": keys})
        maint = sorted((p for p in self.faults if p.maint), key=order)
        rules = None
        if maint:
            blocks = ["# Maintenance windows of the maintenance faults (generated by "
                      "tools/scenario_gen.py).\n# Read on top of rules/default.toml."]
            for p in maint:
                host, ws, we = p.maint
                blocks.append(f'[[maintenance]]\nname = "{p.label} {host} firmware upgrade"\n'
                              f'cis = ["{host}"]\nstart = "{ts(ws)}"\nend = "{ts(we)}"')
            rules = "\n\n".join(blocks) + "\n"
        self.self_check(plans, lines, truth)
        return lines, truth, rules

    # -- self-checks --------------------------------------------------------------------------

    def self_check(self, plans, lines, truth):
        topo = self.topo
        # Lines: CIs exist / resolve, times non-decreasing, keys <-> identities one to one.
        times = [parse_ts(x["received_at"]) for x in lines]
        assert times == sorted(times), "received_at decreases"
        key_ident, ident_key, first_status = {}, {}, {}
        for line in lines:
            ci = topo.resolve(line)
            assert ci is not None, f"unresolvable alert {line}"
            assert "namespace" not in line["labels"] and "service" not in line["labels"]
            ident = json.dumps({k: line.get(k) for k in ("source", "name", "ci", "severity",
                                                         "summary", "labels")}, sort_keys=True)
            assert key_ident.setdefault(line["dedup_key"], ident) == ident, (
                f"dedup key {line['dedup_key']} used for two alerts")
            assert ident_key.setdefault(ident, line["dedup_key"]) == line["dedup_key"]
            short = (line["source"], line["name"], ci)
            assert ident_key.setdefault(short, line["dedup_key"]) == line["dedup_key"], (
                f"{short} alerts under two dedup keys")
            first_status.setdefault(line["dedup_key"], line["status"])
        assert all(s == "firing" for s in first_status.values()), "a key starts resolved"
        # Truth: every key exactly once; roots exist.
        listed = [k for i in truth["incidents"] for k in i["alerts"]] + truth["suppressed"]
        assert len(listed) == len(set(listed)), "a key is listed twice in the truth"
        assert sorted(listed) == sorted(key_ident), "truth and alerts disagree on keys"
        labels = [i["label"] for i in truth["incidents"]]
        assert len(labels) == len(set(labels))
        by_label = {p.label: p for p in plans}
        for inc in truth["incidents"]:
            p = by_label[inc["label"]]
            root = inc["root_ci"]
            assert root in topo.cis, root
            alerting = {p.ci_of[k] for k in inc["alerts"]}
            assert root in alerting, f"{p.label}: the root does not alert"
            if p.kind == "noise":
                assert len(inc["alerts"]) == 1
                continue
            # Reachability: every alert's CI is the root, or downstream of it within 3 hops
            # along the root alert's class relations, or (rack power) a co-cause sharing a
            # direct dependent with the root.
            root_names = {p.defs[k]["name"] for k in inc["alerts"] if p.ci_of[k] == root}
            classes = {alert_class(n) for n in root_names} - {None}
            assert len(classes) == 1, (p.label, root_names)
            cls = classes.pop()
            down = topo.downstream(root, cls)
            root_children = {x for t, x in topo.down[root] if t in CLASS_RELS[cls]}
            for ci in sorted(alerting):
                if ci == root or ci in down:
                    continue
                shared = {x for t, x in topo.down[ci] if t in CLASS_RELS[cls]} & root_children
                assert shared, f"{p.label}: {ci} is not within {HOPS} hops of {root}"
            # Root as the engine defines it: nothing else alerting upstream of it; ties go to
            # the first seen.
            union = tuple(sorted(set().union(*CLASS_RELS.values())))
            cands = [c for c in alerting
                     if not any(o != c and o in topo.upstream_closure(c, union) for o in alerting)]
            first_seen = {}
            for k in inc["alerts"]:
                c = p.ci_of[k]
                first_seen[c] = min(first_seen.get(c, p.first[k]), p.first[k])
            cands.sort(key=lambda c: (first_seen[c], c))
            assert cands[0] == root, f"{p.label}: root {root}, but {cands}"
        # Separation: no two truth incidents can be mistaken for one.
        for i, a in enumerate(plans):
            for b in plans[i + 1:]:
                why = conflict(a, b)
                assert why is None, f"{a.label} / {b.label}: {why}"
        # Maintenance: every message of the window's host inside the window.
        for p in plans:
            if p.maint:
                host, ws, we = p.maint
                assert host in topo.cis and topo.cis[host]["type"] == "host", host
                for t, _, _ in p.events:
                    assert ws <= t < we, (p.label, t)
        # Noise: the names have the intended class, far hosts are far, non-topology noise does
        # not repeat on one CI within the same-ci window.
        for p in plans:
            if p.kind != "noise":
                continue
            name = p.noise_name
            if name in NOISE_NAMES:
                assert alert_class(name) is None, name
            else:
                assert alert_class(name) is not None, name
            if name == "HostUnreachable":
                assert self.far_enough(p.root_ci, p), p.label
            for f in self.faults:
                if f.overlaps(p) and alert_class(name) is not None:
                    assert p.root_ci not in f.reach and not (p.reach & f.cis), p.label
        nontopo = sorted((ci, s, e, p.label) for p in plans for ci, s, e in p.nontopo)
        for (c1, s1, e1, l1), (c2, s2, e2, l2) in zip(nontopo, nontopo[1:]):
            if c1 == c2 and l1 != l2:
                assert s2 > e1 + SAME_CI_WINDOW, (l1, l2)
        # Flapping: >= 4 state changes within 10 minutes.
        for p in plans:
            if p.kind == "flapping":
                (k,) = p.defs
                st = [(t, line["status"]) for t, _, line in p.events]
                changes = [t for (t, s), (_, prev) in zip(st[1:], st) if s != prev]
                assert any(sum(1 for u in changes if t <= u < t + FLAP_WINDOW) >= 4
                           for t in changes), p.label


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def dumps(obj):
    return json.dumps(obj, ensure_ascii=False)


def cmdb_text(cis, rels):
    out = ["{", '  "cis": [']
    out += [f"    {dumps(c)}," for c in cis]
    out[-1] = out[-1][:-1]
    out += ["  ],", '  "relations": [']
    out += [f"    {dumps(r)}," for r in rels]
    out[-1] = out[-1][:-1]
    out += ["  ]", "}"]
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output directory (created)")
    ap.add_argument("--racks-per-site", type=int, default=10)
    ap.add_argument("--sites", type=int, default=2)
    ap.add_argument("--faults", type=int, default=12, help="injected faults in total")
    ap.add_argument("--noise", type=int, default=2, help="noise alerts per fault")
    ap.add_argument("--duration-minutes", type=int, default=120)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if args.duration_minutes < 10:
        ap.error("--duration-minutes must be at least 10")

    gen = Generator(args)
    lines, truth, rules = gen.run()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "cmdb.json": cmdb_text(gen.layout.cis, gen.layout.rels),
        "alerts.jsonl": "".join(dumps(x) + "\n" for x in lines),
        "truth.json": json.dumps(truth, indent=2) + "\n",
    }
    if rules:
        files["rules.toml"] = rules
    elif (out / "rules.toml").exists():
        (out / "rules.toml").unlink()
    for name, text in files.items():
        (out / name).write_bytes(text.encode("utf-8"))
    # Read back: the CMDB and truth files parse to what was generated.
    assert json.loads((out / "cmdb.json").read_text("utf-8")) == {
        "cis": gen.layout.cis, "relations": gen.layout.rels}
    assert json.loads((out / "truth.json").read_text("utf-8")) == truth

    distinct = len({x["dedup_key"] for x in lines})
    kinds = {}
    for p in gen.faults:
        kinds[p.kind] = kinds.get(p.kind, 0) + 1
    print(f"{out}: {len(gen.layout.cis)} CIs, {len(gen.layout.rels)} relations; "
          f"{len(lines)} alert lines, {distinct} distinct alerts; "
          f"{len(truth['incidents'])} truth incidents ({len(gen.faults) - kinds.get('maintenance', 0)}"
          f" faults, {len(gen.noise)} noise), {len(truth['suppressed'])} suppressed; faults: "
          + ", ".join(f"{k} {kinds[k]}" for k in KINDS if k in kinds))
    for name in files:
        print(f"  wrote {out / name} ({len(files[name].encode('utf-8'))} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
