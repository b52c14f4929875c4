"""Part of the Packer stand-in: register the "built" image in the fake Glance, as Packer's
openstack builder would at the end of a build, with the credentials from the environment."""

import os

import openstack

conn = openstack.connect(cloud=os.environ["OS_CLOUD"], password=os.environ["OS_PASSWORD"])
response = conn.image.post(
    "/images",
    json={
        "name": os.environ["IMAGE_NAME"],
        "coop_image_group": os.environ["IMAGE_GROUP"],
        "coop_states_sha256": os.environ["STATES_SHA256"],
        "coop_template_sha256": os.environ["TEMPLATE_SHA256"],
        "disk_format": "qcow2",
        "container_format": "bare",
    },
)
response.raise_for_status()
print(f"registered image {response.json()['name']} as {response.json()['id']}")
