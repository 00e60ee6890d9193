"""A seeded generator of legacy nova notifications: a compute cell's day-to-day traffic.

Shaped after the Rackspace-era samples in ``shared/data/real/legacy`` (the
StackTach notigen templates): full nova payloads with ``image_meta``,
``_context_*`` keys, ``publisher_id`` ``compute.<host>``. It exercises the
usage audit of ``etc/triggers.yaml``: every instance that exists during a UTC
day gets one ``compute.instance.exists`` for that day shortly after the next
midnight (audit period midnight to midnight), which fires the day's stream.

The fleet: ``instances`` is its size. Half of it is already running at
``start``; the rest is created over the first days, and from then on the
instances deleted each day are replaced by new ones, so the number alive (and
this generator's memory) stays about the same however many days are asked
for. Along the way instances are resized, rebuilt, rebooted, power cycled,
snapshotted, renamed, and deleted; a few builds fail.

Generation is lazy, one day at a time: a day's notifications are planned as
small records, sorted by timestamp, and each becomes a full dict only when it
is yielded. Everything comes from ``random.Random(seed)``: the same spec gives
the same notifications, byte for byte.

    python bench/workload.py --instances 2000 --days 3 --seed 20150201 -o nova.jsonl.gz

``broken_fraction`` makes that fraction of the instances send one deliberately
inconsistent end-of-day ``.exists`` (for their first day): a ``launched_at``
that differs from the day's rebuild (on the first full day, for an instance
born during the run), a ``deleted_at`` while the instance is active, or no
``.exists`` at all. Each is recorded in ``Workload.truth.broken``, which is
what the usage audit must find.
"""

from __future__ import annotations

import argparse
import gzip
import math
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

DAY = timedelta(days=1)
EXISTS = "compute.instance.exists"
INSTANCE_PREFIX = "compute.instance."

# How instances go wrong when broken_fraction > 0 (taken in turn).
BROKEN_KINDS = ("launched_at_mismatch", "deleted_at_while_active", "missing_exists")

# Daily chance of each operation for an active instance (steady state).
DAILY_OPERATIONS = (
    ("update", 0.08),       # rename / metadata change: a bare compute.instance.update
    ("reboot", 0.04),
    ("power_cycle", 0.04),  # power off, then on again later that day
    ("snapshot", 0.03),
    ("resize", 0.02),
    ("rebuild", 0.02),
    ("power_off", 0.01),    # stays stopped overnight
)
DELETE_RATE = 0.04          # per active instance per day
POWER_ON_RATE = 0.4         # per stopped instance per day
ERROR_DELETE_RATE = 0.6     # per failed build per day
BUILD_FAILURE_RATE = 0.02
SAME_DAY_DELETE_RATE = 0.05  # a new instance deleted the day it was built
SAME_DAY_EXTRA_OP_RATE = 0.10
PREEXISTING_SHARE = 0.5
MAX_BIRTHS_PER_DAY = 0.25   # of the fleet, while it fills up

# Upper bounds (seconds) of each operation's duration, from the delays below,
# so an operation is only started if it ends before midnight.
MAX_SECONDS = {"create": 560, "update": 1, "reboot": 200, "power_cycle": 4100,
               "power_off": 130, "power_on": 70, "snapshot": 1000, "resize": 7000,
               "rebuild": 380, "delete": 110}


@dataclass(frozen=True)
class Flavor:
    id: int
    flavorid: str
    name: str
    memory_mb: int
    vcpus: int
    root_gb: int
    ephemeral_gb: int
    swap: int
    rxtx_factor: float
    vcpu_weight: int


FLAVORS = (
    Flavor(2, "2", "512MB Standard Instance", 512, 1, 20, 0, 512, 80.0, 10),
    Flavor(3, "3", "1GB Standard Instance", 1024, 1, 40, 0, 1024, 120.0, 10),
    Flavor(4, "4", "2GB Standard Instance", 2048, 2, 80, 0, 2048, 240.0, 20),
    Flavor(5, "5", "4GB Standard Instance", 4096, 2, 160, 0, 2048, 400.0, 40),
    Flavor(6, "6", "8GB Standard Instance", 8192, 4, 320, 0, 2048, 600.0, 80),
    Flavor(7, "7", "15GB Standard Instance", 15360, 6, 620, 0, 2048, 800.0, 150),
    Flavor(9, "performance1-1", "1 GB Performance", 1024, 1, 20, 0, 0, 200.0, 10),
    Flavor(10, "performance1-2", "2 GB Performance", 2048, 2, 40, 20, 0, 400.0, 20),
    Flavor(11, "performance1-4", "4 GB Performance", 4096, 4, 40, 40, 0, 800.0, 40),
    Flavor(12, "performance1-8", "8 GB Performance", 8192, 8, 40, 80, 0, 1600.0, 80),
    Flavor(13, "performance2-15", "15 GB Performance", 15360, 4, 40, 150, 0, 1250.0, 150),
)
FLAVOR_WEIGHTS = (24, 20, 12, 8, 4, 2, 12, 9, 5, 3, 1)

# (org.openstack__1__os_distro, os_version, os_distro, os_type, min_ram)
DISTROS = (
    ("org.ubuntu", "14.04", "ubuntu", "linux", 512),
    ("org.ubuntu", "12.04", "ubuntu", "linux", 512),
    ("org.debian", "7", "debian", "linux", 512),
    ("org.centos", "6.5", "centos", "linux", 512),
    ("org.centos", "5.10", "centos", "linux", 512),
    ("com.redhat", "6.5", "rhel", "linux", 512),
    ("org.fedora", "20", "fedora", "linux", 512),
    ("org.opensuse", "13.1", "opensuse", "linux", 512),
    ("com.microsoft.server", "2012.0", "windows", "windows", 1024),
    ("com.microsoft.server", "2008.2", "windows", "windows", 1024),
)
DISTRO_WEIGHTS = (30, 14, 10, 14, 4, 8, 4, 2, 9, 5)

ROLE_SETS = (
    ["admin", "compute:default", "object-store:default", "identity:default"],
    ["checkmate", "object-store:default", "compute:default", "identity:user-admin", "admin"],
    ["identity:user-admin", "object-store:default", "compute:default", "checkmate", "admin"],
    ["compute:default", "object-store:default", "identity:default"],
)
NAME_WORDS = ("web", "db", "app", "api", "cache", "worker", "build", "test", "dev", "prod",
              "mysql", "redis", "lb", "jenkins", "mail", "vpn", "backup", "staging", "node")


@dataclass(frozen=True)
class BrokenExists:
    """One deliberately inconsistent end-of-day audit record (or a missing one)."""

    instance_id: str
    day: date
    kind: str          # one of BROKEN_KINDS
    expected: dict     # what a consistent .exists would carry (field -> value)
    sent: dict         # what was sent instead ({} for missing_exists)


@dataclass
class WorkloadTruth:
    """What the workload emitted, for checking what a consumer made of it.

    Filled as ``notifications()`` is consumed. A notification's *stream day*
    is the UTC day of its timestamp, except for ``.exists``, whose day is its
    ``audit_period_beginning`` (the usage_audit trigger's grouping).
    """

    notifications: int = 0
    by_type: Counter = field(default_factory=Counter)
    instances: int = 0                 # instances that appeared (created or pre-existing)
    instance_days: int = 0             # distinct (instance_id, stream day) with a compute.instance.* notification
    # Only with detailed truth (the default); they grow with the input.
    events: Counter = field(default_factory=Counter)       # (instance_id, day) -> compute.instance.* count
    exists: set = field(default_factory=set)               # (instance_id, day) with an end-of-day .exists
    broken: dict = field(default_factory=dict)             # instance_id -> BrokenExists


@dataclass
class WorkloadSpec:
    """What to generate.

    ``instances`` is the fleet size (about that many exist on any day);
    ``days`` UTC days from ``start``'s date, each followed by its nightly
    audit; ``broken_fraction`` of the instances (exactly, in creation order)
    send one inconsistent end-of-day ``.exists``.
    """

    instances: int = 2000
    days: int = 3
    seed: int = 20150201
    start: datetime = datetime(2015, 2, 1)
    broken_fraction: float = 0.0


@dataclass(frozen=True)
class _Image:
    id: str
    name: str
    meta: dict
    os_type: str


@dataclass(frozen=True)
class _Tenant:
    id: str
    user_id: str
    user_name: str
    roles: list
    is_admin: bool
    remote_address: str
    glance_servers: list | None


@dataclass(frozen=True)
class _Host:
    name: str
    node: str


class _Instance:
    __slots__ = ("serial", "id", "tenant", "display_name", "hostname", "reservation_id",
                 "created_at", "launched_at", "deleted_at", "flavor", "image", "host", "state",
                 "task_state", "ipv4", "ipv6", "private_ip", "metadata", "broken", "first_day")

    def view(self) -> tuple:
        """The mutable part of the payload, as of now."""
        return (self.state, self.task_state, self.flavor, self.image, self.host,
                self.launched_at, self.deleted_at)


def _fmt(moment: datetime) -> str:
    return moment.isoformat(" ", "microseconds")


def _fmt_or_empty(moment: datetime | None) -> str:
    return "" if moment is None else moment.isoformat(" ", "microseconds")


def _midnight(moment: datetime) -> datetime:
    return datetime(moment.year, moment.month, moment.day)


class Workload:
    """Legacy nova notifications for ``spec``; see the module docstring.

    ``detailed_truth=False`` keeps only the counters of :class:`WorkloadTruth`
    (``events`` and ``exists`` grow with the input; a long benchmark that
    measures memory does not want them).
    """

    def __init__(self, spec: WorkloadSpec, *, detailed_truth: bool = True):
        if spec.instances < 1 or spec.days < 1:
            raise ValueError("a workload needs at least one instance and one day")
        if not 0.0 <= spec.broken_fraction <= 1.0:
            raise ValueError("broken_fraction must be between 0 and 1")
        self.spec = spec
        self.detailed_truth = detailed_truth
        self.truth = WorkloadTruth()

    # -- public ------------------------------------------------------------------------

    def notifications(self) -> Iterator[dict]:
        """The notifications in timestamp order; each call starts over (and resets ``truth``)."""
        self._reset()
        start_day = _midnight(self.spec.start)
        truth = self.truth
        detailed = self.detailed_truth
        recent: dict[date, set[str]] = {}
        for index in range(self.spec.days + 1):
            midnight = start_day + index * DAY
            records = self._plan_day(midnight, last=index == self.spec.days)
            records.sort(key=_record_order)
            # Stream days before yesterday can get no more notifications.
            for old in [day for day in recent if day < midnight.date() - DAY]:
                del recent[old]
            for record in records:
                notification = self._build(record)
                if notification is None:  # a missing .exists: recorded, nothing sent
                    broken = record[6]["broken"]
                    truth.broken[broken.instance_id] = broken
                    continue
                event_type = record[2]
                truth.notifications += 1
                truth.by_type[event_type] += 1
                if event_type.startswith(INSTANCE_PREFIX):
                    extra = record[6]
                    instance_id = record[3].id
                    stream_day = extra["audit_day"] if "audit_day" in extra else record[0].date()
                    members = recent.get(stream_day)
                    if members is None:
                        members = recent[stream_day] = set()
                    if instance_id not in members:
                        members.add(instance_id)
                        truth.instance_days += 1
                    if detailed:
                        truth.events[(instance_id, stream_day)] += 1
                        if extra.get("end_of_day"):
                            truth.exists.add((instance_id, stream_day))
                    if "broken" in extra:
                        truth.broken[instance_id] = extra["broken"]
                yield notification
            del records

    def lines(self) -> Iterator[bytes]:
        """``notifications()`` as orjson-encoded JSON lines, without the newline."""
        dumps = orjson.dumps
        for notification in self.notifications():
            yield dumps(notification)

    # -- set-up ------------------------------------------------------------------------

    def _reset(self) -> None:
        spec = self.spec
        self.truth = WorkloadTruth()
        self._rng = rng = random.Random(spec.seed)
        # Per-notification ids come from their own generator, so they do not
        # shift the plan when the plan changes shape.
        self._ids = random.Random(rng.getrandbits(64))
        self._seq = 0
        self._serial = 0
        self._broken_count = 0
        self._glance = [self._ip() for _ in range(4)]
        self._scheduler_hosts = [f"scheduler-{rng.randrange(10, 99)}" for _ in range(3)]
        hosts = max(4, spec.instances // 25)
        numbers = rng.sample(range(100, 1_000_000), hosts * 2)
        self._hosts = [_Host(f"host-{numbers[i]}", f"node-{numbers[hosts + i]}")
                       for i in range(hosts)]
        tenants = max(1, spec.instances // 3)
        self._tenants = [self._tenant() for _ in range(tenants)]
        self._base_images = [self._base_image(distro) for distro in DISTROS]
        self._alive: list[_Instance] = []
        self._today: list[_Instance] = []  # every instance that existed during the day being planned
        self._exists_context: dict[str, dict] = {}

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _ip(self) -> str:
        rng = self._rng
        return f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"

    def _ipv6(self) -> str:
        return ":".join(f"{self._rng.getrandbits(16):04x}" for _ in range(8))

    def _tenant(self) -> _Tenant:
        rng = self._rng
        tenant_id = str(rng.randrange(10_000, 1_000_000))
        if rng.random() < 0.4:
            user_id = f"{rng.getrandbits(128):032x}"
            user_name = str(rng.randrange(10_000, 1_000_000))
        else:
            user_id = user_name = str(rng.randrange(10_000, 1_000_000))
        roles = ROLE_SETS[rng.randrange(len(ROLE_SETS))]
        glance = [f"{self._ip()}:9292"] if rng.random() < 0.3 else None
        return _Tenant(tenant_id, user_id, user_name, roles, "admin" in roles and rng.random() < 0.5,
                       self._ip(), glance)

    def _base_image(self, distro: tuple) -> _Image:
        rng = self._rng
        os_distro, version, short, os_type, min_ram = distro
        image_id = self._uuid()
        meta = {"auto_disk_config": rng.choice(("True", "False", "disabled")),
                "base_image_ref": image_id, "cache_in_nova": "True", "container_format": "ovf",
                "disk_format": "vhd", "image_type": "base", "min_disk": "20",
                "min_ram": str(min_ram), "org.openstack__1__architecture": "x64",
                "org.openstack__1__os_distro": os_distro, "org.openstack__1__os_version": version,
                "os_distro": short, "os_type": os_type, "vm_mode": "hvm"}
        name = f"{short.capitalize()} {version} (PVHVM)"
        return _Image(image_id, name, meta, os_type)

    def _pick_image(self, tenant: _Tenant, flavor: Flavor) -> _Image:
        """A base image, or (one time in three) a customer snapshot of one."""
        rng = self._rng
        base = rng.choices(self._base_images, DISTRO_WEIGHTS)[0]
        if rng.random() >= 0.33:
            return base
        source = rng.choices(FLAVORS, FLAVOR_WEIGHTS)[0]
        meta = {k: v for k, v in base.meta.items() if k != "cache_in_nova"}
        meta.update({
            "image_type": "snapshot", "min_disk": str(source.root_gb),
            "instance_type_ephemeral_gb": str(source.ephemeral_gb),
            "instance_type_flavorid": source.flavorid, "instance_type_id": str(source.id),
            "instance_type_memory_mb": str(source.memory_mb),
            "instance_type_name": source.name, "instance_type_root_gb": str(source.root_gb),
            "instance_type_rxtx_factor": str(source.rxtx_factor),
            "instance_type_swap": str(source.swap),
            "instance_type_vcpu_weight": str(source.vcpu_weight),
            "instance_type_vcpus": str(source.vcpus), "instance_uuid": self._uuid(),
            "network_allocated": "True", "user_id": tenant.user_id,
            "xenapi_image_compression_level": "1"})
        return _Image(self._uuid(), f"{rng.choice(NAME_WORDS)}-snapshot-{rng.randrange(1, 99)}",
                      meta, base.os_type)

    def _new_instance(self, day: date, created_at: datetime) -> _Instance:
        rng = self._rng
        inst = _Instance()
        inst.serial = self._serial
        self._serial += 1
        inst.id = self._uuid()
        inst.tenant = tenant = rng.choice(self._tenants)
        inst.display_name = f"{rng.choice(NAME_WORDS)}-{rng.randrange(1, 40):02d}"
        inst.hostname = inst.display_name
        inst.reservation_id = "r-" + "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=8))
        inst.created_at = created_at
        inst.launched_at = None
        inst.deleted_at = None
        inst.flavor = rng.choices(FLAVORS, FLAVOR_WEIGHTS)[0]
        inst.image = self._pick_image(tenant, inst.flavor)
        inst.host = rng.choice(self._hosts)
        inst.state = None  # the first update says building/scheduling
        inst.task_state = None
        inst.ipv4 = inst.ipv6 = None
        inst.private_ip = self._ip()
        inst.metadata = ({"rax_service_level_automation": "Complete"} if rng.random() < 0.3 else {})
        inst.first_day = day
        # Deterministic and exact: instance k is broken when floor(k*f) steps up.
        fraction = self.spec.broken_fraction
        if math.floor((inst.serial + 1) * fraction) > math.floor(inst.serial * fraction):
            inst.broken = BROKEN_KINDS[self._broken_count % len(BROKEN_KINDS)]
            self._broken_count += 1
        else:
            inst.broken = None
        self.truth.instances += 1
        return inst

    # -- planning a day ----------------------------------------------------------------

    def _plan_day(self, midnight: datetime, last: bool) -> list[tuple]:
        """Records of every notification sent during the day starting at ``midnight``."""
        out: list[tuple] = []
        rng = self._rng
        spec = self.spec
        if self._today:  # yesterday's audit, sent after midnight
            self._exists_context = {}
            for inst in self._today:
                self._end_of_day_exists(out, inst, midnight - DAY)
            self._alive = [inst for inst in self._today if inst.state != "deleted"]
        self._today = []
        if last:
            return out
        first = midnight == _midnight(spec.start)
        if first:
            for _ in range(round(spec.instances * PREEXISTING_SHARE)):
                self._alive.append(self._preexisting(midnight))
        end = midnight + DAY
        for inst in self._alive:
            self._today.append(inst)
            self._plan_existing(out, inst, midnight, end,
                                breaking=inst.broken is not None and inst.first_day == midnight.date())
        births = min(spec.instances - len(self._alive),
                     max(1, math.ceil(spec.instances * MAX_BIRTHS_PER_DAY)))
        for _ in range(max(0, births)):
            start = midnight + timedelta(seconds=rng.uniform(30, 86_400 - MAX_SECONDS["create"] - 60))
            inst = self._new_instance(midnight.date(), start)
            if inst.broken == "launched_at_mismatch":
                # Its wrong launched_at goes on the .exists of its first full day,
                # which has a rebuild to disagree with (create.end is not an
                # operation the usage audit compares launched_at against).
                inst.first_day = midnight.date() + DAY
            self._today.append(inst)
            self._plan_birth(out, inst, start, end)
        return out

    def _preexisting(self, midnight: datetime) -> _Instance:
        rng = self._rng
        created = midnight - timedelta(seconds=rng.uniform(86_400, 700 * 86_400))
        inst = self._new_instance(midnight.date(), created)
        inst.launched_at = created + timedelta(seconds=rng.uniform(60, 600))
        if rng.random() < 0.3:  # resized or rebuilt since
            inst.launched_at += timedelta(seconds=rng.uniform(0, (midnight - inst.launched_at).total_seconds()))
        inst.state = "stopped" if rng.random() < 0.04 and inst.broken is None else "active"
        inst.ipv4, inst.ipv6 = self._ip(), self._ipv6()
        return inst

    def _plan_existing(self, out, inst: _Instance, midnight: datetime, end: datetime,
                       breaking: bool) -> None:
        rng = self._rng
        operations = []
        if inst.state == "active":
            operations = [name for name, rate in DAILY_OPERATIONS if rng.random() < rate]
            if breaking:  # the day of a broken .exists: alive, active, and (if it
                # is about launched_at) with a launch event in the stream to disagree with
                operations = (["rebuild"] if inst.broken == "launched_at_mismatch"
                              else [name for name in operations if name != "power_off"])
                if inst.broken == "missing_exists" and not operations:
                    # A day without a single notification has no stream whose
                    # missing .exists anybody could notice.
                    operations = ["update"]
            if rng.random() < DELETE_RATE and not breaking:
                operations.append("delete")
        elif inst.state == "stopped":
            if rng.random() < POWER_ON_RATE:
                operations.append("power_on")
            if rng.random() < DELETE_RATE:
                operations.append("delete")
        elif inst.state == "error":
            if rng.random() < ERROR_DELETE_RATE:
                operations.append("delete")
        self._run_operations(out, inst, operations, midnight, end)

    def _plan_birth(self, out, inst: _Instance, start: datetime, end: datetime) -> None:
        rng = self._rng
        fails = rng.random() < BUILD_FAILURE_RATE and inst.broken is None
        t = self._op_create(out, inst, start, fails)
        operations = []
        if fails:
            if rng.random() < ERROR_DELETE_RATE:
                operations.append("delete")
        else:
            if rng.random() < SAME_DAY_EXTRA_OP_RATE:
                name = rng.choice([name for name, _ in DAILY_OPERATIONS if name != "power_off"])
                operations.append(name)
            if rng.random() < SAME_DAY_DELETE_RATE and inst.broken is None:
                operations.append("delete")
        self._run_operations(out, inst, operations, t + timedelta(seconds=30), end)

    def _run_operations(self, out, inst: _Instance, operations: list[str],
                        earliest: datetime, end: datetime) -> None:
        """Run operations one after another at random times; delete, if any, last."""
        if not operations:
            return
        rng = self._rng
        window = (end - earliest).total_seconds()
        planned = []
        for name in operations:
            latest = window - MAX_SECONDS[name] - 60
            if latest <= 0:
                continue
            offset = rng.uniform(0, latest)
            planned.append((name == "delete", offset, name))
        planned.sort()
        t = earliest
        for _, offset, name in planned:
            start = max(earliest + timedelta(seconds=offset), t + timedelta(seconds=30))
            if start + timedelta(seconds=MAX_SECONDS[name] + 30) > end:
                continue
            t = getattr(self, f"_op_{name}")(out, inst, start)

    # -- notifications of one operation ------------------------------------------------

    def _context(self, inst: _Instance, moment: datetime) -> dict:
        tenant = inst.tenant
        return {"_context_auth_token": f"{self._rng.getrandbits(128):032x}",
                "_context_glance_api_servers": tenant.glance_servers,
                "_context_instance_lock_checked": False, "_context_is_admin": tenant.is_admin,
                "_context_project_id": tenant.id, "_context_project_name": tenant.id,
                "_context_quota_class": None, "_context_read_deleted": "no",
                "_context_remote_address": tenant.remote_address,
                "_context_request_id": "req-" + self._uuid(), "_context_roles": tenant.roles,
                "_context_tenant": tenant.id,
                "_context_timestamp": _fmt(moment - timedelta(seconds=self._rng.uniform(0.05, 2))),
                "_context_user": tenant.user_id, "_context_user_id": tenant.user_id,
                "_context_user_name": tenant.user_name}

    def _admin_context(self, moment: datetime) -> dict:
        return {"_context_auth_token": None, "_context_glance_api_servers": None,
                "_context_instance_lock_checked": False, "_context_is_admin": True,
                "_context_project_id": None, "_context_project_name": None,
                "_context_quota_class": None, "_context_read_deleted": "no",
                "_context_remote_address": None, "_context_request_id": "req-" + self._uuid(),
                "_context_roles": ["admin"], "_context_tenant": None,
                "_context_timestamp": _fmt(moment), "_context_user": None,
                "_context_user_id": None, "_context_user_name": None}

    def _emit(self, out, moment: datetime, event_type: str, inst: _Instance, context: dict,
              extra: dict | None = None, priority: str = "INFO", view: tuple | None = None) -> None:
        out.append((moment, self._seq, event_type, inst, view or inst.view(), context,
                    extra if extra is not None else {}, priority))
        self._seq += 1

    def _update(self, out, moment: datetime, inst: _Instance, context: dict,
                state: str, task_state: str | None) -> None:
        extra = {"old_state": inst.state, "old_task_state": inst.task_state,
                 "new_task_state": task_state, "update": True}
        inst.state, inst.task_state = state, task_state
        self._emit(out, moment, "compute.instance.update", inst, context, extra)

    def _after(self, moment: datetime, low: float, high: float) -> datetime:
        return moment + timedelta(seconds=self._rng.uniform(low, high))

    def _op_create(self, out, inst: _Instance, t: datetime, fails: bool) -> datetime:
        """API update, scheduler, then the compute host builds it (~560 s at most)."""
        ctx = self._context(inst, t)
        self._update(out, t, inst, ctx, "building", "scheduling")
        t = self._after(t, 0.2, 2)
        self._emit(out, t, "scheduler.run_instance.start", inst, ctx, {"scheduler": "start"})
        t = self._after(t, 0.5, 5)
        self._emit(out, t, "scheduler.run_instance.scheduled", inst, ctx, {"scheduler": "scheduled"})
        t = self._after(t, 0.1, 1)
        self._emit(out, t, "scheduler.run_instance.end", inst, ctx, {"scheduler": "end"})
        t = self._after(t, 0.5, 10)
        self._update(out, t, inst, ctx, "building", None)
        t = self._after(t, 0.1, 2)
        self._emit(out, t, "compute.instance.create.start", inst, ctx,
                   {"image_name": inst.image.name})
        for task in ("networking", "block_device_mapping", "spawning"):
            t = self._after(t, 1, 30)
            self._update(out, t, inst, ctx, "building", task)
        t = self._after(t, 20, 420)
        if fails:
            reason = self._rng.choice(("VDI too big for requested resize up.",
                                       "No valid host was found.", "Timeout waiting for vif plugging"))
            self._emit(out, t, "compute.instance.create.error", inst, ctx, {
                "image_name": inst.image.name, "code": 500,
                "message": f"Build of instance {inst.id} aborted: {reason}",
                "exception": {"kwargs": {"code": 500, "instance_uuid": inst.id, "reason": reason}}},
                priority="ERROR")
            t = self._after(t, 0.1, 2)
            self._update(out, t, inst, ctx, "error", None)
            return t
        inst.launched_at = t
        inst.ipv4, inst.ipv6 = self._ip(), self._ipv6()
        self._update(out, t, inst, ctx, "active", None)
        t = self._after(t, 0.1, 3)
        self._emit(out, t, "compute.instance.create.end", inst, ctx,
                   {"image_name": inst.image.name, "message": "Success", "fixed_ips": True})
        return t

    def _op_update(self, out, inst: _Instance, t: datetime) -> datetime:
        self._update(out, t, inst, self._context(inst, t), inst.state, None)
        return t

    def _op_reboot(self, out, inst: _Instance, t: datetime) -> datetime:
        ctx = self._context(inst, t)
        self._update(out, t, inst, ctx, "active", "rebooting")
        t = self._after(t, 0.1, 3)
        self._emit(out, t, "compute.instance.reboot.start", inst, ctx)
        t = self._after(t, 10, 180)
        self._update(out, t, inst, ctx, "active", None)
        t = self._after(t, 0.1, 3)
        self._emit(out, t, "compute.instance.reboot.end", inst, ctx)
        return t

    def _op_power_off(self, out, inst: _Instance, t: datetime) -> datetime:
        ctx = self._context(inst, t)
        self._update(out, t, inst, ctx, "active", "powering-off")
        t = self._after(t, 0.1, 3)
        self._emit(out, t, "compute.instance.power_off.start", inst, ctx)
        t = self._after(t, 5, 120)
        self._update(out, t, inst, ctx, "stopped", None)
        t = self._after(t, 0.1, 3)
        self._emit(out, t, "compute.instance.power_off.end", inst, ctx)
        return t

    def _op_power_on(self, out, inst: _Instance, t: datetime) -> datetime:
        ctx = self._context(inst, t)
        self._update(out, t, inst, ctx, "stopped", "powering-on")
        t = self._after(t, 0.1, 3)
        self._emit(out, t, "compute.instance.power_on.start", inst, ctx)
        t = self._after(t, 5, 60)
        self._update(out, t, inst, ctx, "active", None)
        t = self._after(t, 0.1, 3)
        self._emit(out, t, "compute.instance.power_on.end", inst, ctx)
        return t

    def _op_power_cycle(self, out, inst: _Instance, t: datetime) -> datetime:
        t = self._op_power_off(out, inst, t)
        return self._op_power_on(out, inst, self._after(t, 60, 3600))

    def _op_snapshot(self, out, inst: _Instance, t: datetime) -> datetime:
        ctx = self._context(inst, t)
        self._update(out, t, inst, ctx, "active", "image_snapshot")
        t = self._after(t, 0.1, 3)
        self._emit(out, t, "compute.instance.snapshot.start", inst, ctx)
        t = self._after(t, 5, 60)
        self._update(out, t, inst, ctx, "active", "image_pending_upload")
        t = self._after(t, 1, 20)
        self._update(out, t, inst, ctx, "active", "image_uploading")
        t = self._after(t, 30, 900)
        self._update(out, t, inst, ctx, "active", None)
        t = self._after(t, 0.1, 3)
        self._emit(out, t, "compute.instance.snapshot.end", inst, ctx)
        return t

    def _mid_period_exists(self, out, inst: _Instance, t: datetime, ctx: dict) -> None:
        """nova audits the period so far before a resize or rebuild changes what is billed."""
        midnight = _midnight(t)
        self._emit(out, t, EXISTS, inst, ctx, {
            "audit_period_beginning": str(midnight), "audit_period_ending": _fmt(t),
            "audit_day": midnight.date(), "bandwidth": self._bandwidth(inst, zero=True)})

    def _op_resize(self, out, inst: _Instance, t: datetime) -> datetime:
        rng = self._rng
        ctx = self._context(inst, t)
        new = rng.choice([f for f in FLAVORS if f is not inst.flavor])
        self._update(out, t, inst, ctx, "active", "resize_prep")
        t = self._after(t, 0.2, 3)
        self._mid_period_exists(out, inst, t, ctx)
        t = self._after(t, 0.01, 0.5)
        self._emit(out, t, "compute.instance.resize.prep.start", inst, ctx)
        t = self._after(t, 0.2, 3)
        self._emit(out, t, "compute.instance.resize.prep.end", inst, ctx,
                   {"new_instance_type": new.name, "new_instance_type_id": new.id})
        t = self._after(t, 0.5, 10)
        self._update(out, t, inst, ctx, "active", "resize_migrating")
        t = self._after(t, 0.1, 2)
        self._emit(out, t, "compute.instance.resize.start", inst, ctx)
        t = self._after(t, 30, 1200)
        self._update(out, t, inst, ctx, "active", "resize_migrated")
        t = self._after(t, 0.1, 2)
        self._emit(out, t, "compute.instance.resize.end", inst, ctx)
        if rng.random() < 0.3:
            inst.host = rng.choice(self._hosts)
        inst.flavor = new
        t = self._after(t, 0.5, 10)
        self._update(out, t, inst, ctx, "active", "resize_finish")
        t = self._after(t, 0.1, 2)
        self._emit(out, t, "compute.instance.finish_resize.start", inst, ctx)
        t = self._after(t, 10, 180)
        inst.launched_at = t
        self._update(out, t, inst, ctx, "resized", None)
        t = self._after(t, 0.1, 3)
        self._emit(out, t, "compute.instance.finish_resize.end", inst, ctx, {"fixed_ips": True})
        # The customer checks the server and confirms.
        t = self._after(t, 120, 5400)
        ctx = self._context(inst, t)
        self._emit(out, t, "compute.instance.resize.confirm.start", inst, ctx)
        t = self._after(t, 1, 20)
        self._update(out, t, inst, ctx, "active", None)
        t = self._after(t, 0.1, 3)
        self._emit(out, t, "compute.instance.resize.confirm.end", inst, ctx, {"fixed_ips": True})
        return t

    def _op_rebuild(self, out, inst: _Instance, t: datetime) -> datetime:
        rng = self._rng
        ctx = self._context(inst, t)
        image = self._pick_image(inst.tenant, inst.flavor) if rng.random() < 0.5 else inst.image
        self._update(out, t, inst, ctx, "active", "rebuilding")
        t = self._after(t, 0.2, 3)
        # The audit of the period so far still bills the image being replaced.
        self._mid_period_exists(out, inst, t, ctx)
        inst.image = image
        t = self._after(t, 0.01, 0.5)
        self._emit(out, t, "compute.instance.rebuild.start", inst, ctx,
                   {"image_name": inst.image.name})
        for task in ("rebuild_block_device_mapping", "rebuild_spawning"):
            t = self._after(t, 1, 20)
            self._update(out, t, inst, ctx, "active", task)
        t = self._after(t, 20, 300)
        inst.launched_at = t
        self._update(out, t, inst, ctx, "active", None)
        t = self._after(t, 0.1, 3)
        self._emit(out, t, "compute.instance.rebuild.end", inst, ctx,
                   {"image_name": inst.image.name, "fixed_ips": True})
        return t

    def _op_delete(self, out, inst: _Instance, t: datetime) -> datetime:
        ctx = self._context(inst, t)
        self._update(out, t, inst, ctx, inst.state, "deleting")
        t = self._after(t, 0.1, 3)
        self._emit(out, t, "compute.instance.delete.start", inst, ctx)
        t = self._after(t, 0.1, 2)
        self._emit(out, t, "compute.instance.shutdown.start", inst, ctx)
        t = self._after(t, 2, 90)
        self._emit(out, t, "compute.instance.shutdown.end", inst, ctx)
        t = self._after(t, 0.1, 3)
        inst.deleted_at = t
        self._update(out, t, inst, ctx, "deleted", None)
        t = self._after(t, 0.1, 3)
        self._emit(out, t, "compute.instance.delete.end", inst, ctx)
        return t

    def _bandwidth(self, inst: _Instance, zero: bool = False) -> dict:
        if zero:
            return {"private": {"bw_in": 0, "bw_out": 0}, "public": {"bw_in": 0, "bw_out": 0}}
        rng = self._rng
        scale = inst.flavor.memory_mb * 4096
        return {"private": {"bw_in": rng.randrange(scale * 100), "bw_out": rng.randrange(scale * 20)},
                "public": {"bw_in": rng.randrange(scale * 50), "bw_out": rng.randrange(scale * 200)}}

    def _end_of_day_exists(self, out, inst: _Instance, day_start: datetime) -> None:
        """The nightly usage audit of ``day_start``'s day, sent 00:05-02:00 the next day."""
        rng = self._rng
        day_end = day_start + DAY
        moment = self._after(day_end, 300, 7200)
        host = inst.host.name
        ctx = self._exists_context.get(host)
        if ctx is None:  # one periodic task, one request, per host and night
            ctx = self._exists_context[host] = self._admin_context(day_end + timedelta(seconds=300))
        extra = {"audit_period_beginning": str(day_start), "audit_period_ending": str(day_end),
                 "audit_day": day_start.date(), "end_of_day": True,
                 "bandwidth": self._bandwidth(inst)}
        view = inst.view()
        if inst.broken is not None and inst.first_day == day_start.date():
            kind = inst.broken
            state, task, flavor, image, where, launched, deleted = view
            if kind == "missing_exists":
                expected = {"audit_period_beginning": extra["audit_period_beginning"],
                            "audit_period_ending": extra["audit_period_ending"]}
                extra = {"broken": BrokenExists(inst.id, day_start.date(), kind, expected, {})}
                out.append((moment, self._seq, None, inst, view, ctx, extra, "INFO"))
                self._seq += 1
                return
            if kind == "launched_at_mismatch":
                wrong = launched + timedelta(seconds=rng.choice((-1, 1)) * rng.uniform(600, 20_000))
                view = (state, task, flavor, image, where, wrong, deleted)
                expected, sent = {"launched_at": _fmt(launched)}, {"launched_at": _fmt(wrong)}
            else:  # deleted_at_while_active
                wrong = self._after(day_start, 3600, 82_800)
                view = (state, task, flavor, image, where, launched, wrong)
                expected = {"state": state, "deleted_at": ""}
                sent = {"state": state, "deleted_at": _fmt(wrong)}
            extra["broken"] = BrokenExists(inst.id, day_start.date(), kind, expected, sent)
        self._emit(out, moment, EXISTS, inst, ctx, extra, view=view)

    # -- building a notification -------------------------------------------------------

    def _build(self, record: tuple) -> dict | None:
        moment, _, event_type, inst, view, context, extra, priority = record
        if event_type is None:
            return None
        ids = self._ids
        notification = dict(context)
        notification["_context_roles"] = list(context["_context_roles"])
        notification["_unique_id"] = f"{ids.getrandbits(128):032x}"
        notification["event_type"] = event_type
        notification["message_id"] = str(uuid.UUID(int=ids.getrandbits(128), version=4))
        if "scheduler" in extra:
            notification["payload"] = self._scheduler_payload(inst, view, extra["scheduler"], moment)
            notification["publisher_id"] = f"scheduler.{self._scheduler_hosts[inst.serial % 3]}"
        else:
            notification["payload"] = self._payload(inst, view, extra, moment)
            notification["publisher_id"] = f"compute.{view[4].name}"
        notification["priority"] = priority
        notification["timestamp"] = _fmt(moment)
        return notification

    def _payload(self, inst: _Instance, view: tuple, extra: dict, moment: datetime) -> dict:
        state, task, flavor, image, host, launched, deleted = view
        tenant = inst.tenant
        payload = {
            "access_ip_v4": inst.ipv4, "access_ip_v6": inst.ipv6, "architecture": "x64",
            "availability_zone": None, "created_at": _fmt(inst.created_at),
            "deleted_at": _fmt_or_empty(deleted),
            "disk_gb": flavor.root_gb + flavor.ephemeral_gb, "display_name": inst.display_name,
            "ephemeral_gb": flavor.ephemeral_gb, "host": host.name, "hostname": inst.hostname,
            "image_meta": dict(image.meta),
            "image_ref_url": f"http://{self._glance[inst.serial % len(self._glance)]}:9292/images/{image.id}",
            "instance_flavor_id": flavor.flavorid, "instance_id": inst.id,
            "instance_type": flavor.name, "instance_type_id": flavor.id, "kernel_id": "",
            "launched_at": _fmt_or_empty(launched), "memory_mb": flavor.memory_mb,
            "metadata": dict(inst.metadata), "node": host.node, "os_type": image.os_type,
            "ramdisk_id": "", "reservation_id": inst.reservation_id, "root_gb": flavor.root_gb,
            "state": state, "state_description": task or "", "tenant_id": tenant.id,
            "terminated_at": _fmt_or_empty(deleted), "user_id": tenant.user_id,
            "vcpus": flavor.vcpus,
        }
        if "update" in extra:
            payload["old_state"] = extra["old_state"]
            payload["old_task_state"] = extra["old_task_state"]
            payload["new_task_state"] = extra["new_task_state"]
            payload["audit_period_beginning"] = str(_midnight(moment))
            payload["audit_period_ending"] = _fmt(moment)
            payload["bandwidth"] = {}
        elif "audit_period_beginning" in extra:
            payload["audit_period_beginning"] = extra["audit_period_beginning"]
            payload["audit_period_ending"] = extra["audit_period_ending"]
            payload["bandwidth"] = extra["bandwidth"]
        else:
            for key in ("image_name", "message", "code", "exception",
                        "new_instance_type", "new_instance_type_id"):
                if key in extra:
                    payload[key] = extra[key]
            if "fixed_ips" in extra:
                payload["fixed_ips"] = self._fixed_ips(inst)
        return payload

    def _fixed_ips(self, inst: _Instance) -> list[dict]:
        return [{"address": address, "floating_ips": [], "label": label, "meta": {},
                 "type": "fixed", "version": version}
                for address, label, version in ((inst.ipv4, "public", 4), (inst.ipv6, "public", 6),
                                                (inst.private_ip, "private", 4))]

    def _scheduler_payload(self, inst: _Instance, view: tuple, stage: str,
                           moment: datetime) -> dict:
        state, task, flavor, image, host, launched, deleted = view
        tenant = inst.tenant
        properties = {
            "access_ip_v4": None, "access_ip_v6": None, "architecture": "x64",
            "availability_zone": None, "config_drive": "", "created_at": _fmt(inst.created_at),
            "deleted": False, "display_description": inst.display_name,
            "display_name": inst.display_name, "ephemeral_gb": flavor.ephemeral_gb,
            "hostname": inst.hostname, "image_ref": image.id, "instance_type_id": flavor.id,
            "kernel_id": "", "launch_index": 0, "launched_at": None, "locked": False,
            "memory_mb": flavor.memory_mb, "metadata": dict(inst.metadata), "os_type": image.os_type,
            "power_state": 0, "progress": 0, "project_id": tenant.id, "ramdisk_id": "",
            "reservation_id": inst.reservation_id, "root_gb": flavor.root_gb,
            "task_state": "scheduling", "user_id": tenant.user_id, "uuid": inst.id,
            "vcpus": flavor.vcpus, "vm_state": "building",
        }
        spec = {
            "block_device_mapping": [{
                "boot_index": 0, "delete_on_termination": True, "destination_type": "local",
                "device_name": None, "device_type": "disk", "image_id": image.id,
                "instance_uuid": inst.id, "source_type": "image", "volume_id": None}],
            "image": {"container_format": "ovf", "disk_format": "vhd", "id": image.id,
                      "min_disk": int(image.meta["min_disk"]), "min_ram": int(image.meta["min_ram"]),
                      "name": image.name, "properties": dict(image.meta), "status": "active"},
            "instance_properties": properties,
            "instance_type": {"flavorid": flavor.flavorid, "id": flavor.id,
                              "memory_mb": flavor.memory_mb, "name": flavor.name,
                              "root_gb": flavor.root_gb, "ephemeral_gb": flavor.ephemeral_gb,
                              "rxtx_factor": flavor.rxtx_factor, "swap": flavor.swap,
                              "vcpu_weight": flavor.vcpu_weight, "vcpus": flavor.vcpus},
            "instance_uuids": [inst.id], "num_instances": 1, "security_group": ["default"],
        }
        payload: dict[str, Any] = {"request_spec": spec}
        if stage == "scheduled":
            payload["instance_id"] = inst.id
            payload["weighted_host"] = {"host": host.name, "weight": round(flavor.memory_mb / 512.0, 1)}
        return payload


def _record_order(record: tuple) -> tuple:
    return record[0], record[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=WorkloadSpec.instances)
    parser.add_argument("--days", type=int, default=WorkloadSpec.days)
    parser.add_argument("--seed", type=int, default=WorkloadSpec.seed)
    parser.add_argument("--start", type=datetime.fromisoformat, default=WorkloadSpec.start,
                        help="first UTC day (default 2015-02-01)")
    parser.add_argument("--broken-fraction", type=float, default=0.0)
    parser.add_argument("-o", "--output", default="-",
                        help="a .jsonl or .jsonl.gz file; - (the default) writes to stdout")
    args = parser.parse_args()
    spec = WorkloadSpec(args.instances, args.days, args.seed, args.start, args.broken_fraction)
    workload = Workload(spec, detailed_truth=False)
    report = sys.stdout if args.output != "-" else sys.stderr
    started = time.perf_counter()
    size = 0
    if args.output == "-":
        target = nullcontext(sys.stdout.buffer)
    elif args.output.endswith(".gz"):
        target = gzip.open(args.output, "wb", compresslevel=6)
    else:
        target = Path(args.output).open("wb")
    with target as out:
        for line in workload.lines():
            out.write(line)
            out.write(b"\n")
            size += len(line) + 1
    elapsed = time.perf_counter() - started
    truth = workload.truth
    print(f"{truth.notifications:,} notifications ({size / 1e6:,.1f} MB of JSON, "
          f"{size / max(1, truth.notifications):,.0f} bytes each) in {elapsed:.1f} s; "
          f"{truth.instances:,} instances, {truth.instance_days:,} instance-days, "
          f"{len(truth.broken)} broken", file=report)
    print(f"{'event_type':<44}{'count':>10}", file=report)
    for event_type, count in sorted(truth.by_type.items(), key=lambda item: (-item[1], item[0])):
        print(f"{event_type:<44}{count:>10,}", file=report)


if __name__ == "__main__":
    main()
