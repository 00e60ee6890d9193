"""Ceilometer 27's ``event_definitions.yaml`` against real notifications.

Acceptance criterion: the Ceilometer 27.0.0 definitions file
(``ceilometer/event_definitions.yaml`` in the shared real data) loads without
error and turns the real notification samples there into the traits the file
asks for.

Every expected event below was worked out by hand from the notification JSON
and the YAML definition that matches it last-to-first (anchors and ``<<``
merges expanded), plus Ceilometer's default traits (the file addresses
``ctxt.``, so it gets them): ``service`` (``publisher_id``), ``request_id``
(``_context_request_id``), ``project_id`` and ``tenant_id``
(``payload.tenant_id`` or ``_context_project_id``; ``tenant_id`` then
``_context_tenant``) and ``user_id``
(``payload.user_id`` or ``_context_user_id``) where the definition does not
set them. Reminders used throughout:

* int traits are ``int``; datetime traits are naive UTC ``datetime``; any other
  scalar becomes ``str`` (``instance_type_id: 2`` -> ``"2"``);
* ``""`` is kept for a text trait but means "absent" for int/datetime traits;
  a null or missing field means the trait is absent;
* ``publisher_id.`split(., 1, 1)``` is ``publisher_id.split(".", 1)[1]`` and
  absent when there is no dot; ``split(., 0, -1)`` is the part before the
  first dot (the whole value when there is none).
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from winchester._yaml import parse_yaml
from winchester.distill import (
    DefinitionSet,
    Distiller,
    NotificationRejected,
    available_plugins,
    load_definitions,
)
from winchester.events import make_event

CEILOMETER_27 = "ceilometer/event_definitions.yaml"
OSPROFILER = "ceilometer/osprofiler_event_definitions.yaml"
SPLIT_PLUGIN_2015 = "ceilometer/event_definitions_2015-09_split_plugin_syntax.yaml"

CEILOMETER_TESTS = "legacy/ceilometer_test_notifications.jsonl"
KEYSTONE = "legacy/keystone_doc_notifications.jsonl"
OCTAVIA = "legacy/octavia_doc_notification.jsonl"
MONASCA = "legacy/monasca_spec_notification.jsonl"
NOTIGEN = "legacy/notigen_rendered.jsonl"
LEGACY_FILES = (CEILOMETER_TESTS, KEYSTONE, OCTAVIA, MONASCA, NOTIGEN)
OSLO_WIRE = "oslo_wire_samples.jsonl"
NOVA_VERSIONED = "nova_versioned/nova_versioned_samples_resolved.jsonl"

# Reasons NotificationRejected documents (winchester.distill._distiller).
DOCUMENTED_REASONS = {"not_json", "not_an_object", "bad_envelope", "no_event_type",
                      "no_message_id", "bad_identifier", "no_timestamp", "bad_timestamp"}

dt = datetime


# --------------------------------------------------------------------------- helpers

def read_jsonl(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def notification_at(real_data: Path, file: str, line: int) -> dict[str, Any]:
    """The notification on 0-based ``line`` of a legacy file (rows hold it under "notification")."""
    return read_jsonl(real_data / file)[line]["notification"]


def parse_file(path: Path) -> tuple[Any, list]:
    return parse_yaml(path.read_text(encoding="utf-8"), path.name)


def load_file(path: Path) -> DefinitionSet:
    data, _ = parse_file(path)
    plugins, plugin_problems = available_plugins()
    assert plugin_problems == []
    return load_definitions(data, path.name, plugins)


def trait_types_are_allowed(event: dict[str, Any]) -> bool:
    for value in event.values():
        if type(value) not in (str, int, float, datetime):
            return False
        if isinstance(value, datetime) and value.tzinfo is not None:
            return False
    return True


@pytest.fixture(scope="module")
def ceilometer_27(real_data: Path) -> DefinitionSet:
    return load_file(real_data / CEILOMETER_27)


@pytest.fixture
def distiller(ceilometer_27: DefinitionSet) -> Distiller:
    return Distiller(ceilometer_27, catch_all=False)


# --------------------------------------------------------------------------- loading

def test_ceilometer_27_file_loads(real_data):
    """Ceilometer 27's event_definitions.yaml loads, warnings being errors, into 47 definitions."""
    # jsonpath-ng deprecates the unquoted word in Ceilometer's own
    # `payload.glance_metadata[?key=image_id].value`; under this suite's
    # filterwarnings=error that must not turn into a load error.
    assert parse_file(real_data / CEILOMETER_27)[1] == []
    definitions = load_file(real_data / CEILOMETER_27)
    assert len(definitions) == 47
    assert sum(len(d.matches.patterns) for d in definitions.definitions) == 104
    assert definitions.warnings == ()


def test_osprofiler_file_loads(real_data):
    """Ceilometer's osprofiler example file loads into one definition, with at most warnings."""
    definitions = load_file(real_data / OSPROFILER)
    assert len(definitions) == 1
    assert definitions.definitions[0].matches.patterns == ("profiler.*",)
    assert all(problem.severity == "warning" for problem in definitions.warnings)


def test_split_plugin_2015_file_loads(real_data):
    """The 2015 file using `plugin: split` (string and mapping forms) loads into 43 definitions."""
    _, yaml_problems = parse_file(real_data / SPLIT_PLUGIN_2015)
    # Upstream's trove.* block really does define `state` twice (line 435).
    assert [(p.where, p.line, p.severity) for p in yaml_problems] == [
        ("key 'state'", 435, "warning")]
    definitions = load_file(real_data / SPLIT_PLUGIN_2015)
    assert len(definitions) == 43


# --------------------------------------------------------------------------- exact events

INSTANCE_CREATE_END = {
    "message_id": "dae6f69c-00e0-41c0-b371-41ec3b7f4451",
    "event_type": "compute.instance.create.end",
    "timestamp": dt(2012, 5, 8, 20, 23, 48, 28195),
    "tenant_id": "7c150a59fe714e6f9263774af9688f0e",
    "project_id": "7c150a59fe714e6f9263774af9688f0e",  # default: payload.tenant_id
    "user_id": "1e3ce043029547f1a61c1996d1a531a2",
    "instance_id": "9f9d01b9-4a58-4271-9e27-398b21ab20d1",
    "display_name": "testme",
    "resource_id": "9f9d01b9-4a58-4271-9e27-398b21ab20d1",
    "host": "vagrant-precise",
    "service": "compute",
    "memory_mb": 512,
    "disk_gb": 0,
    "root_gb": 0,
    "ephemeral_gb": 0,
    "vcpus": 1,
    "instance_type_id": "2",
    "instance_type": "m1.tiny",
    "state": "active",
    "launched_at": dt(2012, 5, 8, 20, 23, 47, 985999),
    # deleted_at is "" (absent for a datetime); no cell_name, flavor id or image_meta.
    "availability_zone": "1e3ce043029547f1a61c1996d1a531a4",
    "request_id": "req-d68b36e0-9233-467f-9afb-d81435d64d66",
}

CASES = [
    pytest.param(CEILOMETER_TESTS, 0, INSTANCE_CREATE_END, id="compute.instance.create.end"),
    pytest.param(CEILOMETER_TESTS, 3, {
        "message_id": "4b884c03-756d-4c06-8b42-80b6def9d302",
        "event_type": "compute.instance.exists",
        "timestamp": dt(2012, 5, 8, 16, 3, 44, 122481),
        "tenant_id": "7c150a59fe714e6f9263774af9688f0e",
        "project_id": "7c150a59fe714e6f9263774af9688f0e",  # default: payload.tenant_id
        "user_id": "1e3ce043029547f1a61c1996d1a531a2",
        "instance_id": "3a513875-95c9-4012-a3e7-f90c678854e5",
        "display_name": "testme",
        "resource_id": "3a513875-95c9-4012-a3e7-f90c678854e5",
        "host": "vagrant-precise",
        "service": "compute",
        "memory_mb": 512,
        "disk_gb": 0,
        "root_gb": 0,
        "ephemeral_gb": 0,
        "vcpus": 1,
        "instance_type_id": "2",
        "instance_type": "m1.tiny",
        "state": "active",
        "launched_at": dt(2012, 5, 7, 23, 1, 27),
        "audit_period_beginning": dt(2012, 5, 8, 15, 0),
        "audit_period_ending": dt(2012, 5, 8, 16, 0),
        "request_id": "req-659a8eb2-4372-4c01-9028-ad6e40b0ed22",
    }, id="compute.instance.exists"),
    pytest.param(MONASCA, 0, {
        "message_id": "c6149ba1-34b3-4367-b8c2-b1d6f073742d",
        "event_type": "compute.instance.create.start",
        "timestamp": dt(2015, 9, 18, 20, 55, 37, 639023),
        "tenant_id": "a4f77",
        "project_id": "a4f77",  # default: payload.tenant_id
        "user_id": "be396488c7034811a200a3cb1d103a28",
        "instance_id": "abd2ef5c-0381-434a-8efc-d7b39b28a2b6",
        "display_name": "testeee",
        "resource_id": "abd2ef5c-0381-434a-8efc-d7b39b28a2b6",
        "cell_name": "",  # an empty text value is kept
        "host": "ccp-compute0001-mgmt",
        "service": "compute",
        "memory_mb": 512,
        "disk_gb": 1,
        "root_gb": 1,
        "ephemeral_gb": 0,
        "vcpus": 1,
        "instance_type_id": "4",
        "instance_flavor_id": "1",
        "instance_type": "m1.tiny",
        "state": "building",
        # launched_at/deleted_at are "", image_meta has no org.openstack__1__* keys.
        "request_id": "req-5948338c-f223-4fd8-9249-8769f7a3e460",
    }, id="compute.instance.create.start-monasca"),
    pytest.param(NOTIGEN, 155, {
        "message_id": "aa142d57-8e2a-4aa0-9e3c-f6adb760f1fa",
        "event_type": "compute.instance.update",
        "timestamp": dt(2015, 2, 1, 6, 16, 30, 505000),
        "tenant_id": "198759",
        "project_id": "198759",  # default: payload.tenant_id
        "user_id": "754948",
        "instance_id": "4e701407-eb80-41e0-a145-66848d6aebc1",
        "display_name": "Instance_251625",
        "resource_id": "4e701407-eb80-41e0-a145-66848d6aebc1",
        # publisher_id "publisher-155545" has no dot: no host, service is all of it.
        "service": "publisher-155545",
        "memory_mb": 4096,
        "disk_gb": 160,
        "root_gb": 160,
        "ephemeral_gb": 0,
        "vcpus": 2,
        "instance_type_id": "5",
        "instance_flavor_id": "5",
        "instance_type": "4GB Standard Instance",
        "state": "stopped",
        "old_state": "active",
        "os_architecture": "x64",
        "os_version": "6.3",
        "os_distro": "com.redhat",
        "launched_at": dt(2014, 3, 17, 21, 26, 18, 761000),
        "request_id": "req-a7963fec-c64c-40d6-9090-946b23defaa9",
    }, id="compute.instance.update-notigen"),
    pytest.param(NOTIGEN, 145, {
        "message_id": "141270d3-a709-4f4b-81ab-df7ba0b01340",
        "event_type": "compute.instance.delete.end",
        "timestamp": dt(2015, 2, 1, 5, 1, 50, 329000),
        "tenant_id": "445354",
        "project_id": "445354",  # default: payload.tenant_id
        "user_id": "457956",
        "instance_id": "f11edee0-9632-4635-aec3-4ff554f1d7b9",
        "display_name": "Instance_630349",
        "resource_id": "f11edee0-9632-4635-aec3-4ff554f1d7b9",
        "service": "publisher-882567",
        "memory_mb": 512,
        "disk_gb": 20,
        "root_gb": 20,
        "ephemeral_gb": 0,
        "vcpus": 1,
        "instance_type_id": "2",
        "instance_flavor_id": "2",
        "instance_type": "512MB Standard Instance",
        "state": "deleted",
        "os_architecture": "x64",
        "os_version": "12.04",
        "os_distro": "org.ubuntu",
        "launched_at": dt(2015, 1, 30, 20, 40, 58, 401000),
        "deleted_at": dt(2015, 2, 1, 5, 10, 9, 401000),
        "request_id": "req-f04e7289-32ee-4f90-9577-cd9aad8483ac",
    }, id="compute.instance.delete.end-notigen"),
    pytest.param(CEILOMETER_TESTS, 61, {
        "message_id": "0c65cb9c-018c-11e2-bc91-5453ed1bbb5f",
        "event_type": "volume.attach.end",
        "timestamp": dt(2015, 4, 30, 12, 0),
        "user_id": "bcb7746c7a41472d88a1ffac89ba6a9b",
        "project_id": "7ffe17a15c724e2aa79fc839540aec15",
        "availability_zone": "nova",
        "display_name": "2",
        "replication_status": "disabled",
        "status": "exists",
        "created_at": dt(2014, 10, 28, 9, 31, 20),
        "resource_id": "cccccccc-cccc-cccc-cccccccccccc",
        "host": "volumes.example.com",
        "size": 1,
        "type": "3a9a398b-7e3b-40da-b09e-2115ad8cd68b",
        "service": "volumes.example.com",
        "tenant_id": "7ffe17a15c724e2aa79fc839540aec15",
    }, id="volume.attach.end"),
    pytest.param(CEILOMETER_TESTS, 48, {
        "message_id": "1d2944f9-f8e9-4b2b-8df1-465f759a63e8",
        "event_type": "snapshot.create.end",
        "timestamp": dt(2015, 4, 30, 12, 0),
        "user_id": "bcb7746c7a41472d88a1ffac89ba6a9b",
        "project_id": "7ffe17a15c724e2aa79fc839540aec15",
        "availability_zone": "nova",
        "display_name": "11",
        "status": "creating",
        "created_at": dt(2014, 10, 28, 9, 49, 7),
        "resource_id": "cccccccc-cccc-cccc-cccccccccccc",
        "volume_id": "2925bb3b-2b51-496a-bb6e-01a20e950e07",
        "service": "snapshots.example.com",
        "tenant_id": "7ffe17a15c724e2aa79fc839540aec15",
    }, id="snapshot.create.end"),
    pytest.param(CEILOMETER_TESTS, 28, {
        "message_id": "0c65cb9c-018c-11e2-bc91-5453ed1bbb5f",
        "event_type": "image.upload",
        "timestamp": dt(2015, 4, 30, 12, 0),
        "project_id": "fake",
        "resource_id": "cccccccc-cccc-cccc-cccccccccccc",
        "name": "fake image #3",
        "status": "saving",
        "created_at": dt(2012, 9, 18, 10, 13, 44, 571370),
        "user_id": "fake",
        "size": 19,  # deleted_at is null
        "service": "images.example.com",
    }, id="image.upload"),
    pytest.param(CEILOMETER_TESTS, 26, {
        "message_id": "aaaaaaaa-aaaa-aaaa-aaaaaaaaaaaa",
        "event_type": "image.send",
        "timestamp": dt(2015, 4, 30, 12, 0),
        "receiver_project": "bbbbbbbb-bbbb-bbbb-bbbbbbbbbbbb",
        "receiver_user": "dddddddd-dddd-dddd-dddddddddddd",
        "user_id": "eeeeeeee-eeee-eeee-eeeeeeeeeeee",
        "image_id": "cccccccc-cccc-cccc-cccccccccccc",
        "destination_ip": "1.2.3.4",
        "bytes_sent": 42,
        "service": "images.example.com",
    }, id="image.send"),
    pytest.param(CEILOMETER_TESTS, 42, {
        "message_id": "7135b8ab-e13c-4ac8-bc31-75e7f756622a",
        "event_type": "port.create.end",
        "timestamp": dt(2012, 9, 27, 14, 28, 31, 536370),
        "user_id": "b44b7ce67fc84414a5c1660a92a1b862",      # ctxt.user_id
        "project_id": "82ed0c40ebe64d0bb3310027039c8ed2",   # ctxt.tenant_id
        "name": "",
        "resource_id": "9cdfeb92-9391-4da7-95a1-ca214831cfdb",  # payload.port.id
        "service": "network.ubuntu-VirtualBox",
    }, id="port.create.end"),
    pytest.param(CEILOMETER_TESTS, 36, {
        "message_id": "9e839576-cc47-4c60-a7d8-5743681213b1",
        "event_type": "network.create.end",
        "timestamp": dt(2012, 9, 27, 14, 11, 27, 86575),
        "user_id": "b44b7ce67fc84414a5c1660a92a1b862",
        "project_id": "82ed0c40ebe64d0bb3310027039c8ed2",
        "name": "abcedf",
        "resource_id": "7fd4eb2f-a38e-4c25-8490-71ca8800c9be",
        "service": "network.ubuntu-VirtualBox",
    }, id="network.create.end"),
    pytest.param(CEILOMETER_TESTS, 8, {
        "message_id": "fdffeca1-2b5a-4dc9-b8ae-87c482a83e0d",
        "event_type": "firewall.create.end",
        "timestamp": dt(2014, 9, 15, 17, 22, 11, 323644),
        "user_id": "1c1f7c80efc24a16b835ae1c0802d0a1",
        "project_id": "a820f2d6293b4a7587d1c582767f43fb",
        "name": "my_firewall",
        "resource_id": "e2d1155f-6bc4-4292-9cfa-ea91af4b38c8",
        "service": "network.ubuntu",
        "request_id": "req-e56a8a5e-5d42-43e8-9677-2d36e6e17d5e",
        "tenant_id": "a820f2d6293b4a7587d1c582767f43fb",  # _context_tenant
    }, id="firewall.create.end"),
    pytest.param(KEYSTONE, 0, {
        "message_id": "0156ee79-b35f-4cef-ac37-d4a85f231c69",
        "event_type": "identity.project.created",
        "timestamp": dt(2013, 8, 29, 19, 3, 45, 960280),
        "resource_id": "671da331c47d4e29bb6ea1d270154ec3",
        "initiator_id": "c9f76d3c31e142af9291de2935bde98a",
        "service": "identity.host1234",
    }, id="identity.project.created-cadf"),
    pytest.param(KEYSTONE, 5, {
        "message_id": "e23bee7e-0753-4824-885c-e0f86179671f",
        "event_type": "identity.authenticate",
        "timestamp": dt(2025, 3, 27, 17, 9, 37, 318895),
        "typeURI": "http://schemas.dmtf.org/cloud/audit/1.0/event",
        "id": "7f160bb3-762c-5dee-93a3-e4c46324a6d8",
        "action": "authenticate",
        "eventType": "activity",
        "eventTime": dt(2025, 3, 27, 17, 9, 37, 318590),  # "+0000"
        "outcome": "failure",
        "initiator_typeURI": "service/security/account/user",
        "initiator_id": "d7bec06f41254509987354d0c0581cdc",
        "initiator_host_agent":
            "openstacksdk/4.3.0 keystoneauth1/5.9.1 python-requests/2.32.3 CPython/3.12.7",
        "initiator_host_addr": "127.0.0.1",
        "target_typeURI": "service/security/account/user",
        "target_id": "5ca93d89-b1fd-5245-9c37-508f0a034289",
        "observer_typeURI": "service/security",
        "observer_id": "f11c53400a5247baa2f120ff36c66b8f",
        "service": "identity.host1234",
    }, id="identity.authenticate-cadf"),
    pytest.param(KEYSTONE, 3, {
        "message_id": "a5901371-d5fd-b3bb-448f-a14dead6f4cb",
        "event_type": "identity.role_assignment.created",
        "timestamp": dt(2014, 8, 20, 1, 20, 47, 932842),
        "role": "0e6b990380154a2599ce6b6e91548a68",
        "group": "c1e22dc67cbd469ea0e33bf428fe597a",
        "project": "24bdcff1aab8474895dbaac509793de1",
        "service": "identity.host1234",
    }, id="identity.role_assignment.created"),
    pytest.param(CEILOMETER_TESTS, 21, {
        # '*http.*' matches, but the payload is not CADF: only the defaults remain.
        "message_id": "dae6f69c-00e0-41c0-b371-41ec3b7f4451",
        "event_type": "http.request",
        "timestamp": dt(2012, 5, 8, 20, 23, 48, 28195),
        "service": "compute.vagrant-precise",
        "request_id": "req-d68b36e0-9233-467f-9afb-d81435d64d66",
        "tenant_id": "7c150a59fe714e6f9263774af9688f0e",  # default: _context_project_id
    }, id="http.request"),
    pytest.param(CEILOMETER_TESTS, 22, {
        "message_id": "dae6f69c-00e0-41c0-b371-41ec3b7f4451",
        "event_type": "http.response",
        "timestamp": dt(2012, 5, 8, 20, 23, 48, 28195),
        "service": "compute.vagrant-precise",
        "request_id": "req-d68b36e0-9233-467f-9afb-d81435d64d66",
        "tenant_id": "7c150a59fe714e6f9263774af9688f0e",  # default: _context_project_id
    }, id="http.response"),
    pytest.param(CEILOMETER_TESTS, 39, {
        # The later '*http.*' definition wins over 'objectstore.http.request'.
        "message_id": "6eccedba-120e-4db8-9735-2ad5f061e5ee",
        "event_type": "objectstore.http.request",
        "timestamp": dt(2013, 7, 29, 6, 51, 34, 474815),
        "user_id": "openstack: 288f6260-bf37-4737-a178-5038c84ba244",
        "typeURI": "http: //schemas.dmtf.org/cloud/audit/1.0/event",
        "eventType": "activity",
        "action": "read",
        "outcome": "success",
        "id": "openstack: 69972bb6-14dd-46e4-bdaf-3148014363dc",
        # eventTime "2015-01-30T16: 38: 43.233621" is malformed: dropped.
        "observer_id": "target",
        "target_id": "account",
        "target_typeURI": "service/storage/object",
        "initiator_typeURI": "service/security/account/user",
        "initiator_id": "openstack: 288f6260-bf37-4737-a178-5038c84ba244",
        "service": "ceilometermiddleware",
        "request_id": "req-a8bfa89b-d28b-4b95-9e4b-7d7875275650",
    }, id="objectstore.http.request-swift"),
    pytest.param(CEILOMETER_TESTS, 45, {
        # The definition sets `service` (payload.service, absent), so no default service.
        "message_id": "dae6f69c-00e0-41c0-b371-41ec3b7f4451",
        "event_type": "profiler.compute",
        "timestamp": dt(2012, 5, 8, 20, 23, 48, 28195),
        "name": "some_name",
        "base_id": "2e3ce043029547f1a61c1996d1a531a2",
        "trace_id": "3e3ce043029547f1a61c1996d1a531a2",
        "parent_id": "4e3ce043029547f1a61c1996d1a531a2",
        "user_id": "1e3ce043029547f1a61c1996d1a531a2",  # default: _context_user_id
    }, id="profiler.compute"),
    pytest.param(OCTAVIA, 0, {
        "message_id": "d84a3800-06ca-410e-a1a3-b40a02306a97",
        "event_type": "octavia.loadbalancer.create.end",
        "timestamp": dt(2022, 4, 22, 23, 2, 15, 717375),
        "project_id": "qs59p6z696cp9cho8ze96edddvpfyvgz",
        "name": "my-octavia-loadbalancer",
        "description": "",
        # payload.loadbalancer_id and the top-level vip_* do not exist (the
        # 2022 payload has "id" and a nested "vip"); publisher_id is null.
        "request_id": "req-072bab53-1b9b-46fa-92b0-7f04305c31bf",
        # Ceilometer's default reads only the context's project_id; this older context
        # has only the tenant, which is kept (as StackDistiller's default kept it).
        "tenant_id": "qs59p6z696cp9cho8ze96edddvpfyvgz",  # _context_tenant
    }, id="octavia.loadbalancer.create.end"),
]


@pytest.mark.parametrize(("file", "line", "expected"), CASES)
def test_real_notification_becomes_exact_event(real_data, distiller, file, line, expected):
    """A real notification becomes exactly the event the Ceilometer 27 definition describes."""
    event = distiller.distill(notification_at(real_data, file, line))
    assert event == expected
    assert all(type(event[k]) is type(v) for k, v in expected.items())


WIRE_INSTANCE = {
    "tenant_id": "30be1fc9a03c4e94ab05c403a8a377f2",
    "project_id": "30be1fc9a03c4e94ab05c403a8a377f2",  # default: payload.tenant_id
    "user_id": "e1d870e51c7340cb9d555b15cbfcaec2",
    "instance_id": "178b0921-8f85-4257-88b6-2e743b5a975c",
    "display_name": "demo-1",
    "resource_id": "178b0921-8f85-4257-88b6-2e743b5a975c",
    "service": "compute",
    "memory_mb": 512,
    "vcpus": 1,
    "launched_at": dt(2024, 1, 2, 3, 4, 5),
}
WIRE_REQUEST_ID = "req-00000000-0000-0000-0000-000000000001"


@pytest.mark.parametrize(("line", "expected"), [
    pytest.param(0, {
        **WIRE_INSTANCE,
        "message_id": "fd30ccbb-e811-48b3-b07f-d4a04382e321",
        "event_type": "compute.instance.create.end",
        "timestamp": dt(2026, 11, 22, 1, 25, 29, 743064),
        "host": "host-a", "state": "active", "request_id": WIRE_REQUEST_ID,
    }, id="v2-info-create.end"),
    pytest.param(1, {
        **WIRE_INSTANCE,
        "message_id": "2c0994db-0155-4b81-94d3-675c6a7facb5",
        "event_type": "compute.instance.create.error",
        "timestamp": dt(2026, 11, 22, 1, 25, 29, 757797),
        "host": "host-a", "state": "error", "request_id": WIRE_REQUEST_ID,
    }, id="v2-error-create.error"),
    pytest.param(2, {
        **WIRE_INSTANCE,
        "message_id": "40afb084-e90f-49d0-b6b3-3c7109e06ef0",
        "event_type": "compute.instance.exists",
        "timestamp": dt(2026, 11, 22, 1, 25, 29, 762933),
        "host": "host-a", "state": "active",
        "audit_period_beginning": dt(2024, 1, 1), "audit_period_ending": dt(2024, 1, 2),
    }, id="v2-no-context-exists"),
    pytest.param(3, None, id="v2-versioned-instance.update-unmatched"),
    pytest.param(4, {
        **WIRE_INSTANCE,
        "message_id": "f96c9094-276c-4cc6-970a-08f20649b102",
        "event_type": "compute.instance.delete.start",
        "timestamp": dt(2026, 11, 22, 1, 25, 29, 781627),
        "host": "host-b", "state": "deleting", "request_id": WIRE_REQUEST_ID,
    }, id="v1-no-envelope-delete.start"),
])
def test_oslo_wire_body_becomes_exact_event(real_data, distiller, line, expected):
    """Each raw oslo.messaging AMQP body distills (distill_raw) to exactly the expected event."""
    raw = (real_data / OSLO_WIRE).read_bytes().splitlines()[line]
    assert distiller.distill_raw(raw) == expected


def test_unmatched_wire_body_with_catch_all_gets_default_traits(real_data, ceilometer_27):
    """With catch_all, the unmatched versioned instance.update body gets only the default traits."""
    raw = (real_data / OSLO_WIRE).read_bytes().splitlines()[3]
    event = Distiller(ceilometer_27, catch_all=True).distill_raw(raw)
    assert event == {
        "message_id": "14b527b8-2bbd-4b95-8f46-c111f3506da1",
        "event_type": "instance.update",
        "timestamp": dt(2026, 11, 22, 1, 25, 29, 765454),
        "service": "nova-compute:host-a",
        "request_id": WIRE_REQUEST_ID,
        # from the context: the versioned payload has no tenant_id or user_id
        "project_id": "30be1fc9a03c4e94ab05c403a8a377f2",
        "tenant_id": "30be1fc9a03c4e94ab05c403a8a377f2",
    }


def test_cinder_glance_metadata_filter_and_attachment_index(real_data, distiller):
    """Cinder's `glance_metadata[?key=image_id]` filter and `volume_attachment[0]` index work."""
    # volume.create.end
    notification = copy.deepcopy(notification_at(real_data, CEILOMETER_TESTS, 63))
    # Shaped as cinder sends them: volume_glance_metadata rows and attachment rows.
    notification["payload"]["glance_metadata"] = [
        {"key": "image_name", "value": "cirros-0.6.2"},
        {"key": "image_id", "value": "5fb0ff67-2c4b-4f34-86b0-3c1a7e3b2c11"},
        {"key": "min_disk", "value": "1"},
    ]
    notification["payload"]["volume_attachment"] = [
        {"server_id": "9f9d01b9-4a58-4271-9e27-398b21ab20d1", "attach_status": "attached",
         "mountpoint": "/dev/vdb"},
        {"server_id": "3a513875-95c9-4012-a3e7-f90c678854e5", "attach_status": "attached",
         "mountpoint": "/dev/vdc"},
    ]
    assert distiller.distill(notification) == {
        "message_id": "0c65cb9c-018c-11e2-bc91-5453ed1bbb5f",
        "event_type": "volume.create.end",
        "timestamp": dt(2015, 4, 30, 12, 0),
        "user_id": "bcb7746c7a41472d88a1ffac89ba6a9b",
        "project_id": "7ffe17a15c724e2aa79fc839540aec15",
        "availability_zone": "nova",
        "display_name": "2",
        "replication_status": "disabled",
        "status": "exists",
        "created_at": dt(2014, 10, 28, 9, 31, 20),
        "image_id": "5fb0ff67-2c4b-4f34-86b0-3c1a7e3b2c11",
        "instance_id": "9f9d01b9-4a58-4271-9e27-398b21ab20d1",
        "resource_id": "cccccccc-cccc-cccc-cccccccccccc",
        "host": "volumes.example.com",
        "size": 1,
        "type": "3a9a398b-7e3b-40da-b09e-2115ad8cd68b",
        "service": "volumes.example.com",
        "tenant_id": "7ffe17a15c724e2aa79fc839540aec15",
    }


def test_profiler_datetime_timestamp_trait_sets_event_time(real_data, distiller):
    """A profiler `timestamp` (datetime trait) replaces the event time; db.statement works."""
    notification = copy.deepcopy(notification_at(real_data, CEILOMETER_TESTS, 45))
    notification["payload"].update({
        "project": "nova", "service": "api", "timestamp": "2012-05-08T20:23:48.500000",
        "info": {"host": "ctl-1", "db": {"statement": "SELECT 1"},
                 "request": {"path": "/v2.1/servers", "query": "", "method": "GET",
                             "scheme": "http"}},
    })
    assert distiller.distill(notification) == {
        "message_id": "dae6f69c-00e0-41c0-b371-41ec3b7f4451",
        "event_type": "profiler.compute",
        "timestamp": dt(2012, 5, 8, 20, 23, 48, 500000),
        "project": "nova",
        "service": "api",
        "name": "some_name",
        "base_id": "2e3ce043029547f1a61c1996d1a531a2",
        "trace_id": "3e3ce043029547f1a61c1996d1a531a2",
        "parent_id": "4e3ce043029547f1a61c1996d1a531a2",
        "user_id": "1e3ce043029547f1a61c1996d1a531a2",  # default: _context_user_id
        "host": "ctl-1",
        "path": "/v2.1/servers",
        "query": "",
        "method": "GET",
        "scheme": "http",
        "db.statement": "SELECT 1",
    }


HEAT_CONTEXT = {  # the context keys of the real firewall.create.end sample (line 8)
    "_context_request_id": "req-e56a8a5e-5d42-43e8-9677-2d36e6e17d5e",
    "_context_tenant": "a820f2d6293b4a7587d1c582767f43fb",
    "_context_tenant_id": "a820f2d6293b4a7587d1c582767f43fb",
    "_context_user_id": "1c1f7c80efc24a16b835ae1c0802d0a1",
}
STACK_ARN = "arn:openstack:heat::a820f2d6293b4a7587d1c582767f43fb:stacks/web/0f4c"


@pytest.mark.parametrize(("trustor", "user_id"), [
    pytest.param(None, "1c1f7c80efc24a16b835ae1c0802d0a1", id="no-trustor-falls-back-to-user"),
    pytest.param("9b2a6c1f3f0e4bc4a1b2c3d4e5f60718", "9b2a6c1f3f0e4bc4a1b2c3d4e5f60718",
                 id="trustor-wins"),
])
def test_orchestration_ctxt_field_list_takes_first_non_null(distiller, trustor, user_id):
    """`['ctxt.trustor_user_id', 'ctxt.user_id']` reads _context_* keys; the first non-null wins."""
    notification = {
        **HEAT_CONTEXT, "_context_trustor_user_id": trustor,
        "event_type": "orchestration.stack.create.end",
        "message_id": "5c8a2f34-8a9f-4b7e-9a55-1f0e2d3c4b5a",
        "publisher_id": "orchestration.heat-engine-1",
        "priority": "INFO",
        "timestamp": "2014-09-15 17:25:02.000001",
        "payload": {"stack_identity": STACK_ARN,
                    "name": "web", "tenant_id": "a820f2d6293b4a7587d1c582767f43fb",
                    "state": "CREATE_COMPLETE"},
    }
    assert distiller.distill(notification) == {
        "message_id": "5c8a2f34-8a9f-4b7e-9a55-1f0e2d3c4b5a",
        "event_type": "orchestration.stack.create.end",
        "timestamp": dt(2014, 9, 15, 17, 25, 2, 1),
        "project_id": "a820f2d6293b4a7587d1c582767f43fb",
        "user_id": user_id,
        "resource_id": STACK_ARN,
        "name": "web",
        "service": "orchestration.heat-engine-1",
        "request_id": "req-e56a8a5e-5d42-43e8-9677-2d36e6e17d5e",
        "tenant_id": "a820f2d6293b4a7587d1c582767f43fb",
    }


def test_trove_definition_merges_two_anchors(distiller):
    """`<<: [*trove_base_traits, *trove_common_traits]` gives both anchors' traits plus its own."""
    notification = {
        "event_type": "trove.instance.modify_flavor",
        "message_id": "e4f5a6b7-0000-4c1d-8e2f-3a4b5c6d7e8f",
        "publisher_id": "taskmanager.trove-1",
        "timestamp": "2016-03-02T11:00:01.250000",
        "payload": {
            "tenant_id": "t-2", "user_id": "u-2", "instance_id": "inst-2",
            "instance_type": "m1.small", "instance_type_id": "2",
            "launched_at": "2016-03-01T10:00:00", "instance_name": "db-1", "state": "ACTIVE",
            "nova_instance_id": "nova-2", "service_id": "mysql",
            "created_at": "2016-03-01T09:58:00",
            "region": "RegionOne", "name": "db-1", "availability_zone": "nova",
            "instance_size": 4096, "volume_size": "10", "nova_volume_id": "vol-2",
            "old_instance_size": 2048, "modify_at": "2016-03-02T11:00:00",
        },
    }
    assert distiller.distill(notification) == {
        "message_id": "e4f5a6b7-0000-4c1d-8e2f-3a4b5c6d7e8f",
        "event_type": "trove.instance.modify_flavor",
        "timestamp": dt(2016, 3, 2, 11, 0, 1, 250000),
        # trove_base_traits
        "instance_type": "m1.small", "user_id": "u-2", "resource_id": "inst-2",
        "instance_type_id": "2", "launched_at": dt(2016, 3, 1, 10, 0), "instance_name": "db-1",
        "state": "ACTIVE", "nova_instance_id": "nova-2", "service_id": "mysql",
        "created_at": dt(2016, 3, 1, 9, 58), "region": "RegionOne",
        # trove_common_traits
        "name": "db-1", "availability_zone": "nova", "instance_size": 4096, "volume_size": 10,
        "nova_volume_id": "vol-2",
        # its own, then the defaults
        "old_instance_size": 2048, "modify_at": dt(2016, 3, 2, 11, 0),
        "service": "taskmanager.trove-1", "tenant_id": "t-2", "project_id": "t-2",
    }


def test_malformed_cadf_event_time_is_dropped_and_counted(real_data, distiller):
    """The swift sample's malformed eventTime drops only that trait, counted in trait_warnings."""
    event = distiller.distill(notification_at(real_data, CEILOMETER_TESTS, 39))
    assert event is not None and "eventTime" not in event and event["action"] == "read"
    assert [trait for (_, trait) in distiller.stats.trait_warnings.elements()] == ["eventTime"]


def test_osprofiler_file_keeps_notification_timestamp(real_data):
    """With the osprofiler file (text `timestamp` trait) the profiler sample keeps its own time."""
    event = Distiller(load_file(real_data / OSPROFILER)).distill(
        notification_at(real_data, CEILOMETER_TESTS, 45))
    assert event == {
        "message_id": "dae6f69c-00e0-41c0-b371-41ec3b7f4451",
        "event_type": "profiler.compute",
        "timestamp": dt(2012, 5, 8, 20, 23, 48, 28195),
        "name": "some_name",
        "base_id": "2e3ce043029547f1a61c1996d1a531a2",
        "trace_id": "3e3ce043029547f1a61c1996d1a531a2",
        "parent_id": "4e3ce043029547f1a61c1996d1a531a2",
    }


def test_split_plugin_2015_file_gives_same_host_and_service(real_data):
    """The 2015 `plugin: split` definitions turn compute.instance.create.end into exact traits."""
    event = Distiller(load_file(real_data / SPLIT_PLUGIN_2015)).distill(
        notification_at(real_data, CEILOMETER_TESTS, 0))
    # compute.instance.* of 2015: no display_name/resource_id/availability_zone
    # traits, and instance_type_id is an int there.
    assert event == {
        "message_id": "dae6f69c-00e0-41c0-b371-41ec3b7f4451",
        "event_type": "compute.instance.create.end",
        "timestamp": dt(2012, 5, 8, 20, 23, 48, 28195),
        "tenant_id": "7c150a59fe714e6f9263774af9688f0e",
        "user_id": "1e3ce043029547f1a61c1996d1a531a2",
        "instance_id": "9f9d01b9-4a58-4271-9e27-398b21ab20d1",
        "host": "vagrant-precise",
        "service": "compute",
        "memory_mb": 512,
        "disk_gb": 0,
        "root_gb": 0,
        "ephemeral_gb": 0,
        "vcpus": 1,
        "instance_type_id": 2,
        "instance_type": "m1.tiny",
        "state": "active",
        "launched_at": dt(2012, 5, 8, 20, 23, 47, 985999),
        "request_id": "req-d68b36e0-9233-467f-9afb-d81435d64d66",
    }


# --------------------------------------------------------------------------- sweep

# The seven ceilometer test notifications whose timestamps are malformed in the
# source (e.g. "2014-05-1510: 24: 56.335612"), by 0-based line.
MALFORMED_TIMESTAMP_LINES = {16, 17, 37, 43, 56, 57, 58}


def test_every_real_notification_converts_or_is_rejected_with_documented_reason(real_data,
                                                                                distiller):
    """Every real legacy/wire notification gives an event, None or NotificationRejected."""
    outcomes: Counter[str] = Counter()
    rejected_lines = set()

    def run(source: str, line: int, call, argument) -> None:
        try:
            event = call(argument)
        except NotificationRejected as exc:
            assert exc.reason in DOCUMENTED_REASONS, (source, line, exc.reason)
            outcomes[f"rejected:{exc.reason}"] += 1
            if source == CEILOMETER_TESTS:
                rejected_lines.add(line)
            return
        if event is None:
            outcomes["unmatched"] += 1
            return
        assert trait_types_are_allowed(event), (source, line, event)
        assert make_event(event) == event, (source, line)
        outcomes["converted"] += 1

    for file in LEGACY_FILES:
        for line, row in enumerate(read_jsonl(real_data / file)):
            run(file, line, distiller.distill, row["notification"])
    for line, raw in enumerate((real_data / OSLO_WIRE).read_bytes().splitlines()):
        run(OSLO_WIRE, line, distiller.distill_raw, raw)

    # 411 notifications: 367 converted (60 ceilometer tests, 7 keystone, 1 octavia,
    # 1 monasca, 294 notigen, 4 wire); 37 match no definition (12 ceilometer
    # tests such as l3.meter or pool.create.end, 24 notigen scheduler.* and
    # bare error types, the versioned instance.update); 7 malformed timestamps.
    assert outcomes == {"converted": 367, "unmatched": 37, "rejected:bad_timestamp": 7}
    assert rejected_lines == MALFORMED_TIMESTAMP_LINES


# --------------------------------------------------------------------------- nova versioned

NOVA_TEST_DEFINITIONS = """\
- event_type: 'instance.*'
  traits:
    instance_uuid:
      fields: payload.'nova_object.data'.uuid
    state:
      fields: "payload.'nova_object.data'.state"
    tenant_id:
      fields: "payload.'nova_object.data'.tenant_id"
    memory_mb:
      type: int
      fields: "payload.'nova_object.data'.flavor.'nova_object.data'.memory_mb"
    launched_at:
      type: datetime
      fields: "payload.'nova_object.data'.launched_at"
    ip_address:
      fields: "payload.'nova_object.data'.ip_addresses[0].'nova_object.data'.address"
    host:
      fields: "publisher_id.`split(:, 1, 1)`"
"""


def with_envelope(notification: dict[str, Any], number: int) -> dict[str, Any]:
    """What oslo.messaging adds on the wire: a message id and a timestamp."""
    return {**notification, "message_id": f"00000000-0000-4000-8000-{number:012d}",
            "timestamp": "2026-08-21 12:00:00.000001"}


def test_nova_versioned_samples_without_message_id_are_rejected(real_data, distiller):
    """All 140 nova versioned samples, lacking message_id, are rejected with no_message_id."""
    rows = read_jsonl(real_data / NOVA_VERSIONED)
    assert len(rows) == 140
    reasons = Counter()
    for row in rows:
        with pytest.raises(NotificationRejected) as caught:
            distiller.distill(row["notification"])
        reasons[caught.value.reason] += 1
    assert reasons == {"no_message_id": 140}


def test_nova_versioned_samples_with_envelope_distill(real_data, ceilometer_27):
    """With message_id and timestamp added, every nova versioned sample distills (catch-all)."""
    distiller = Distiller(ceilometer_27, catch_all=True)
    for number, row in enumerate(read_jsonl(real_data / NOVA_VERSIONED)):
        notification = row["notification"]
        event = distiller.distill(with_envelope(notification, number))
        # No Ceilometer 27 pattern matches a versioned event type; the payload
        # is a nova object, so payload.tenant_id is absent too.
        assert event == {
            "message_id": f"00000000-0000-4000-8000-{number:012d}",
            "event_type": notification["event_type"],
            "timestamp": dt(2026, 8, 21, 12, 0, 0, 1),
            "service": notification["publisher_id"],
        }, row["sample_file"]


def test_nova_versioned_instance_create_end_with_quoted_key_paths(real_data):
    """Paths through quoted `'nova_object.data'` keys extract instance-create-end exactly."""
    data, problems = parse_yaml(NOVA_TEST_DEFINITIONS, "nova_versioned.yaml")
    assert problems == []
    distiller = Distiller(load_definitions(data, "nova_versioned.yaml", available_plugins()[0]))
    row = next(r for r in read_jsonl(real_data / NOVA_VERSIONED)
               if r["sample_file"] == "instance-create-end.json")
    assert distiller.distill(with_envelope(row["notification"], 1)) == {
        "message_id": "00000000-0000-4000-8000-000000000001",
        "event_type": "instance.create.end",
        "timestamp": dt(2026, 8, 21, 12, 0, 0, 1),
        "instance_uuid": "178b0921-8f85-4257-88b6-2e743b5a975c",
        "state": "active",
        "tenant_id": "6f70656e737461636b20342065766572",
        "memory_mb": 512,
        "launched_at": dt(2012, 10, 29, 13, 42, 11),
        "ip_address": "192.168.1.3",
        "host": "compute",
        "service": "nova-compute:compute",
    }


def test_the_default_traits_follow_the_files_dialect_unless_configured(real_data):
    """Ceilometer's file gets Ceilometer's defaults (project_id, user_id, tenant_id from the
    context's project_id); a StackDistiller file keeps StackDistiller's; the setting overrides."""
    from winchester.distill import CEILOMETER_DEFAULT_TRAITS, DEFAULT_TRAITS

    data, _ = parse_file(real_data / CEILOMETER_27)
    plugins, _ = available_plugins()
    assert load_definitions(data, "c.yaml", plugins).default_traits == "ceilometer"
    stacktach = real_data / "stacktach" / "other_configs" / "winchester_etc_event_definitions.yaml"
    stack_data, _ = parse_file(stacktach)
    assert load_definitions(stack_data, "s.yaml", plugins).default_traits == "stackdistiller"

    # A modern context: project_id and user_id, no tenant; the payload has neither.
    notification = {"event_type": "unlisted.event", "message_id": "m-1",
                    "timestamp": "2024-01-02 03:04:05", "publisher_id": "svc.host",
                    "_context_project_id": "p-1", "_context_user_id": "u-1",
                    "_context_request_id": "req-1", "payload": {}}
    by_choice = {}
    for choice, source in (("ceilometer", data), ("stackdistiller", data), ("auto", stack_data)):
        definitions = load_definitions(source, "x.yaml", plugins, choice)
        by_choice[choice] = Distiller(definitions, catch_all=True).distill(notification)
    assert set(CEILOMETER_DEFAULT_TRAITS) - set(DEFAULT_TRAITS) == {"project_id", "user_id"}
    assert {k: by_choice["ceilometer"][k] for k in ("project_id", "user_id", "tenant_id")} == {
        "project_id": "p-1", "user_id": "u-1", "tenant_id": "p-1"}
    for stackdistiller in (by_choice["stackdistiller"], by_choice["auto"]):
        assert not {"project_id", "user_id", "tenant_id"} & set(stackdistiller)
        assert stackdistiller["request_id"] == "req-1" and stackdistiller["service"] == "svc.host"


def test_a_file_in_the_short_form_addressing_ctxt_is_ceilometers_too():
    """`name: ctxt.x` (Ceilometer's short form) marks a Ceilometer file like `fields: ctxt.x`."""
    plugins, _ = available_plugins()
    data, _ = parse_yaml("- event_type: '*'\n  traits:\n    user: ctxt.user_id\n", "short.yaml")
    assert load_definitions(data, "short.yaml", plugins).default_traits == "ceilometer"
