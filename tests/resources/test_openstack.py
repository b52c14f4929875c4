"""The OpenStackResource through the real openstacksdk against the FAKE OpenStack API (Keystone,
Glance, Nova, Neutron on 127.0.0.1, tests/fakes/openstack.py): image lookups, pruning that keeps
the newest N and never an image a server runs on, server status and addresses, clear errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import yaml
from fakes.openstack import FakeOpenStack

from resources.openstack import GROUP_PROPERTY, OpenStackError, OpenStackResource


@pytest.fixture
def fake():
    cloud = FakeOpenStack()
    cloud.start()
    yield cloud
    cloud.stop()


@pytest.fixture
def clouds_yaml(tmp_path, fake):
    path = tmp_path / "clouds.yaml"
    path.write_text(yaml.safe_dump(fake.clouds_yaml("fake")))
    return path


@pytest.fixture
def openstack(clouds_yaml, fake) -> OpenStackResource:
    return OpenStackResource(clouds_yaml=str(clouds_yaml), password=fake.credentials.password)


def seed_images(fake: FakeOpenStack, group: str, count: int) -> list[str]:
    start = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)
    return [
        fake.add_image(
            f"coop-{group}-{i}",
            properties={GROUP_PROPERTY: group},
            created_at=start + timedelta(days=7 * i),
        )
        for i in range(count)
    ]


def test_images_are_found_by_group_newest_first(fake, openstack):
    web = seed_images(fake, "web", 3)
    seed_images(fake, "support", 2)
    fake.add_image("debian-12", properties={})  # not ours
    images = openstack.images(cloud="fake", group="web")
    assert [i.id for i in images] == list(reversed(web))
    assert images[0].name == "coop-web-2" and images[0].group == "web"
    latest = openstack.latest_images(cloud="fake", groups=["web", "support", "postgres"])
    assert {g: i.name for g, i in latest.items()} == {
        "web": "coop-web-2",
        "support": "coop-support-1",
    }
    assert openstack.find_image(cloud="fake", name_or_id="debian-12").group is None
    # the requests went to the fake, over HTTP, with a token Keystone issued
    assert ("POST", "/identity/v3/auth/tokens") in fake.requests()
    assert fake.requests("GET", r"^/image/v2/images")


def test_listing_follows_the_pages(fake, openstack):
    seed_images(fake, "web", 30)  # the fake serves 25 a page, as Glance does by default
    assert len(openstack.images(cloud="fake", group="web")) == 30
    assert len(fake.requests("GET", r"^/image/v2/images$")) >= 2


def test_pruning_keeps_the_newest_and_any_image_in_use(fake, openstack):
    web = seed_images(fake, "web", 5)
    support = seed_images(fake, "support", 2)
    fake.add_server("web-production-1", image_id=web[0], addresses=["10.100.6.1"])  # the oldest

    preview = openstack.prune_images(cloud="fake", group="web", keep=2, dry_run=True)
    assert [i.name for i in preview.deleted] == ["coop-web-2", "coop-web-1"]
    assert len(fake.image_names()) == 7  # a dry run deletes nothing

    result = openstack.prune_images(cloud="fake", group="web", keep=2)
    assert [i.name for i in result.kept] == ["coop-web-4", "coop-web-3"]
    assert [i.name for i in result.in_use] == ["coop-web-0"]
    assert [i.name for i in result.deleted] == ["coop-web-2", "coop-web-1"]
    assert fake.image_names() == [
        "coop-support-0",
        "coop-support-1",
        "coop-web-0",
        "coop-web-3",
        "coop-web-4",
    ]
    assert not fake.requests("DELETED-IN-USE")
    assert f"| coop-web-0 | `{web[0]}` |" in result.markdown()
    assert "kept (in use)" in result.markdown()
    # another group is never touched, and a second prune has nothing to do
    assert {i.id for i in openstack.images(cloud="fake", group="support")} == set(support)
    assert openstack.prune_images(cloud="fake", group="web", keep=2).deleted == []
    with pytest.raises(OpenStackError, match="keep must be at least 1"):
        openstack.prune_images(cloud="fake", group="web", keep=0)


def test_servers_report_status_addresses_and_image(fake, openstack):
    image = fake.add_image("coop-web-0", properties={GROUP_PROPERTY: "web"})
    fake.add_server(
        "web-staging-1", image_id=image, addresses=["10.100.5.1"], network="coop-nz-por-1"
    )
    fake.add_server(
        "support-1", image_id=image, addresses=["10.100.1.1", "10.100.9.1"], status="BUILD"
    )
    servers = {s.name: s for s in openstack.servers(cloud="fake")}
    assert servers["web-staging-1"].status == "ACTIVE"
    assert servers["web-staging-1"].addresses == {"coop-nz-por-1": ["10.100.5.1"]}
    assert servers["support-1"].all_addresses == ["10.100.1.1", "10.100.9.1"]
    assert servers["support-1"].image_id == image
    assert [s.name for s in openstack.servers(cloud="fake", names=["support-1"])] == ["support-1"]


def test_a_wrong_password_is_a_clear_error_without_the_password(clouds_yaml):
    wrong = OpenStackResource(clouds_yaml=str(clouds_yaml), password="not-the-password")
    with pytest.raises(OpenStackError) as err:
        wrong.images(cloud="fake")
    assert "cloud 'fake': listing images failed" in str(err.value)
    assert "check the user and password (OS_PASSWORD)" in str(err.value)
    assert "not-the-password" not in str(err.value)


def test_an_unknown_cloud_is_a_clear_error(clouds_yaml, tmp_path):
    resource = OpenStackResource(clouds_yaml=str(clouds_yaml), password="x")
    with pytest.raises(OpenStackError, match="cloud 'catalyst' is not configured"):
        resource.images(cloud="catalyst")
    with pytest.raises(OpenStackError, match="does not exist"):
        OpenStackResource(clouds_yaml=str(tmp_path / "nope.yaml")).images(cloud="fake")


def test_tool_env_names_the_file_the_cloud_and_the_password(openstack, clouds_yaml, fake):
    env = openstack.tool_env(cloud="fake")
    assert env == {
        "OS_CLOUD": "fake",
        "OS_CLIENT_CONFIG_FILE": str(clouds_yaml),
        "OS_PASSWORD": fake.credentials.password,
    }
