"""``sensorcast bench scale``: inference replicas on NATS JetStream, CPU per reading, failover, catch-up.

Starts its own nats-server (``--nodes`` 1, or 3 as a cluster), provisions the readings
stream with ``--partitions`` partitions and publishes a backlog: ``--rounds`` readings
for each of ``--devices`` x 4 quantities (100k streams by default), one model cadence
apart, on the unmapped subjects ``sensors.<device>.<quantity>`` so the servers' mapping
partitions them by device (tools/bench/natsload.py). The model is the one
``sensorcast bench inference`` times: a 2x64 GRU step model, one ORT thread.

1. Baseline: the same readings decoded and fed to one ``Engine`` in this process (ticks
   with event time, one per round): CPU per reading, engine alone and decode + engine.
2. For 1, 2, 3 replicas (``--replicas``): real ``sensorcast serve --roles inference,api``
   processes with ``SENSORCAST_NATS__URL``, started together on a fresh ownership (no
   lease, no checkpoint: each replays its partitions from the first reading). Over the
   window from "every replica ready" to "every reading stepped": stream-steps/s, each
   replica's CPU (``/proc/<pid>/stat`` utime + stime) per stream-step, its partitions
   (the leases bucket) and its share of the steps. A partition that moves while the
   replicas agree on their shares is replayed by its new owner: such steps are counted
   (they cost CPU) and shown as ``replayed``.
3. Catch-up: the last replicas stop (SIGTERM: final checkpoint), ``--catchup-rounds`` more
   rounds are published, one replica starts: restore from the checkpoints, then replay.
4. Failover: a smaller live fleet (``--failover-devices`` x 4 at ``--failover-rate``/s) on
   2 replicas with forecasts published to NATS; one replica is killed (SIGKILL) and the
   time to the first forecast from the new owner of one of its partitions is measured.

Every process shares this machine's cores: per-reading CPU and shares are the numbers to
read, not the summed throughput (docs/benchmarks.md projects the scaling from them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from service.config import NatsSettings
from tools.bench import natsload as nl
from tools.bench.scaleprocs import Replicas, baseline
from tools.bench.serveproc import proc_cpu_s
from tools.localservers import start_nats


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int, default=25_000, help="Devices of the backlog (x 4 quantities = streams).")
    p.add_argument("--quantities", type=int, default=4, choices=range(1, 5), help="Quantities per device.")
    p.add_argument("--order", choices=("device", "quantity"), default="device",
                   help="Publishing order in a round: a device's quantities together with the same time (as devices "
                   "send), or quantity by quantity.")
    p.add_argument("--partitions", type=int, default=16, help="Partitions of the readings stream.")
    p.add_argument("--rounds", type=int, default=3,
                   help="Readings per stream in the backlog (10 = 1M readings: ~9 minutes here, docs/benchmarks.md).")
    p.add_argument("--replicas", default="1,2,3", help="Replica counts to measure, comma-separated.")
    p.add_argument("--nodes", type=int, choices=(1, 3), default=1, help="nats-server nodes (3: a cluster, R3 streams).")
    p.add_argument("--catchup-rounds", type=int, default=1, help="Rounds published while no replica runs (0: skip).")
    p.add_argument("--failover-devices", type=int, default=1_000, help="Devices of the live failover fleet (0: skip).")
    p.add_argument("--failover-rate", type=float, default=4_000, help="Live readings/s during the failover test.")
    p.add_argument("--lease-ttl-s", type=float, default=6.0, help="nats.lease_ttl_s of the replicas.")
    p.add_argument("--checkpoint-interval-s", type=float, default=10.0, help="nats.checkpoint_interval_s.")
    p.add_argument("--timeout-s", type=float, default=400.0, help="Give up on a phase after this long.")
    p.add_argument("--json", type=Path, help="Also write the numbers to this JSON file.")
    p.add_argument("--keep", action="store_true", help="Keep the work directory (replica logs) afterwards.")


def _loadavg() -> str:
    return f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"


def run(args: argparse.Namespace) -> int:
    from service.nats.link import NatsLink

    counts = [int(c) for c in args.replicas.split(",") if c.strip()]
    fleet = nl.Fleet(args.devices, args.quantities, args.order)
    total = fleet.streams * args.rounds
    out: dict[str, Any] = {"command": "sensorcast bench scale " + " ".join(sys.argv[3:] if sys.argv[1:3] == [
        "bench", "scale"] else sys.argv[1:]), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "streams": fleet.streams, "partitions": args.partitions, "order": args.order, "rounds": args.rounds, "nodes": args.nodes,
        "load_before": _loadavg()}
    print(f"scale-out on NATS: {fleet.streams:,} streams ({fleet.devices:,} devices x {fleet.quantities}), "
          f"{args.partitions} partitions, {args.rounds} rounds = {total:,} readings, {args.order} order; {args.nodes} nats-server "
          f"node(s); load average {out['load_before']}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="sc-bench-scale-"))
    cluster = start_nats(nodes=args.nodes, partitions=args.partitions, mqtt=False)
    settings = NatsSettings(url=cluster.url, partitions=args.partitions, replicas=3 if args.nodes == 3 else 1,
                            lease_ttl_s=args.lease_ttl_s, checkpoint_interval_s=args.checkpoint_interval_s)
    link = NatsLink(settings, "bench-scale")
    reps: Replicas | None = None
    try:
        link.start()
        bad = link.run(nl.check_mapping(link.nc, fleet, args.partitions))
        if bad:
            raise RuntimeError(f"{bad} probe devices landed in another partition than fnv1a32 % N: mapping changed?")
        from service.nats import provision

        link.run(provision.ensure_all(link.js, settings))
        pub = link.run(nl.publish(link.nc, fleet.messages(range(args.rounds))), None)
        admin = link.nc.jetstream(timeout=120)  # consumers on a big stream take nats-server 2.9 seconds to make
        per_part = link.run(nl.partition_counts(admin, settings.stream, args.partitions), None)
        if pub.refused or sum(per_part) != total:
            raise RuntimeError(f"backlog: {pub.refused} refused, {sum(per_part)} stored of {total}")
        out["publish"] = {"readings": pub.messages, "seconds": round(pub.seconds, 2), "rate": round(pub.rate),
                          "publisher_cores": round(pub.cpu_s / pub.seconds, 2),
                          "partition_min": min(per_part), "partition_max": max(per_part)}
        print(f"backlog: {pub.messages:,} readings published and acknowledged in {pub.seconds:.1f} s = "
              f"{pub.rate:,.0f}/s (publisher {pub.cpu_s / pub.seconds:.2f} cores); per partition "
              f"{min(per_part):,}-{max(per_part):,}", flush=True)

        server_pids = [n.proc.pid for n in cluster.nodes if n.proc is not None]
        s0 = sum(proc_cpu_s(pid) for pid in server_pids)
        floor, made_s = link.run(nl.fetch_floor(admin, settings.stream, per_part, settings.fetch_batch), None)
        s1 = sum(proc_cpu_s(pid) for pid in server_pids)
        out["transport"] = {"client_us": round(floor.cpu_s / floor.messages * 1e6, 2),
                            "server_us": round((s1 - s0) / floor.messages * 1e6, 2), "rate": round(floor.rate),
                            "consumers_made_s": round(made_s, 2)}
        print(f"transport floor, every partition fetched once in this process (nats-py, batches of "
              f"{settings.fetch_batch}, nothing decoded): client {out['transport']['client_us']:.2f} us/reading, "
              f"nats-server {out['transport']['server_us']:.2f} us/reading, {floor.rate:,.0f} readings/s; making the "
              f"{args.partitions} consumers took {made_s:.1f} s", flush=True)

        models = work / "models"
        base = baseline(fleet, args.rounds, models, work / "baseline")
        out["baseline"] = base
        print(f"baseline, one Engine in this process, event-time ticks: engine {base['engine_us']:.2f} us/reading, "
              f"decode + engine {base['full_us']:.2f} us/reading (without round 0, which creates the {base['streams']:,} "
              f"streams: engine {base['steady_engine_us']:.2f}, decode + engine {base['steady_us']:.2f})", flush=True)

        reps = Replicas(work, cluster.url, models, settings, server_pids)
        out["replicas"] = []
        for n in counts:
            link.run(nl.reset_ownership(link.js, settings))
            r = reps.catch_up(n, expected=total, link=link, timeout_s=args.timeout_s,
                              stop_after=not (n == counts[-1] and args.catchup_rounds))
            r["ratio_to_baseline"] = round(r["cpu_us"] / base["full_us"], 2)
            out["replicas"].append(r)
            _print_replicas(r)

        c: dict[str, Any] = {}
        f: dict[str, Any] = {}
        pub2 = None
        if args.catchup_rounds and counts:
            reps.stop_all()  # SIGTERM: each partition's final checkpoint
            more = fleet.messages(range(args.rounds, args.rounds + args.catchup_rounds))
            pub2 = link.run(nl.publish(link.nc, more), None)
            try:
                c = reps.restore(expected=pub2.messages, link=link, timeout_s=args.timeout_s)
            except TimeoutError as e:
                reps.stop_all()
                c = {"error": str(e)}
                print(f"catch-up: NOT CAUGHT UP: {e}", flush=True)
            out["catchup"] = c
        if c and pub2 is not None and not c.get("error"):
            rate = f"{c['rate']:,.0f}/s" if c["rate"] else "not timed (replayed before the API answered)"
            print(f"catch-up: 1 new replica restored {args.partitions} partitions' checkpoints and replayed "
                  f"{c['steps']:,} stream-steps ({pub2.messages:,} readings published while none ran): {rate} "
                  f"from ready (ready {c['ready_s']:.1f} s, caught up {c['total_s']:.1f} s after spawn); "
                  f"{c['cpu_us']:.2f} us CPU/step", flush=True)

        if args.failover_devices:
            reps.stop_all()
            small = nl.Fleet(args.failover_devices, args.quantities, args.order)
            try:
                f = reps.failover(small, args.failover_rate, link, settings, timeout_s=min(args.timeout_s, 120))
            except TimeoutError as e:
                reps.stop_all()
                f = {"error": str(e)}
                print(f"failover: NOT MEASURED: {e}", flush=True)
            out["failover"] = f
        if f and not f.get("error"):
            print(f"failover ({small.streams:,} live streams at {args.failover_rate:,.0f} readings/s, lease "
                  f"{args.lease_ttl_s:g} s): kill -9 of a replica owning {len(f['moved'])} partitions; leases moved "
                  f"after {f['lease_moved_s']:.1f} s; first forecast from the new owner after "
                  f"{f['first_forecast_s']:.1f} s; every moved partition forecasting after "
                  f"{f['all_forecast_s']:.1f} s", flush=True)
        out["load_after"] = _loadavg()
        print(f"load average after: {out['load_after']}")
        print(f"command: {out['command']}")
        if args.json:
            args.json.write_text(json.dumps(out, indent=1) + "\n")
        return 0
    finally:
        if reps is not None:
            reps.close()
        link.close()
        cluster.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _print_replicas(r: dict[str, Any]) -> None:
    if r["error"]:
        print(f"{r['replicas']} replica(s): NOT CAUGHT UP: {r['error']} ({r['window_s']:.0f} s from ready); "
              f"CPU {r['cpu_us']:.2f} us/step; {r['leases_lost']} leases lost (replica logs)", flush=True)
    else:
        print(f"{r['replicas']} replica(s): {r['steps_per_s']:,.0f} stream-steps/s over {r['window_s']:.1f} s "
              f"(backlog caught up {r['total_s']:.1f} s after spawn: {r['backlog_rate']:,.0f} readings/s); "
              f"CPU {r['cpu_us']:.2f} us/step = {r['ratio_to_baseline']:.2f}x the baseline (nats-server "
              f"{r['server_cpu_us']:.2f} us/step besides); replayed {r['replayed']:,}; {r['leases_lost']} leases "
              "lost (replica logs)", flush=True)
    print(f"  {'replica':>8} {'partitions':>10} {'steps':>10} {'share':>6} {'CPU s':>7} {'us/step':>8} {'RSS MB':>7}")
    for p in r["per_replica"]:
        print(f"  {p['name']:>8} {p['partitions']:>10} {p['steps']:>10,} {p['share']:>6.2f} {p['cpu_s']:>7.1f} "
              f"{p['cpu_us']:>8.2f} {p['rss_mb']:>7.0f}")
