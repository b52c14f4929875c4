import pytest
from notes.models import Note


@pytest.mark.django_db
def test_health_counts_the_notes(client):
    Note.objects.create(text="first")
    answer = client.get("/health")
    assert answer.status_code == 200
    assert answer.json()["notes"] == 1


@pytest.mark.django_db
def test_a_note_posted_is_listed(client):
    posted = client.post("/", data="written", content_type="text/plain")
    assert posted.status_code == 200 and posted.json() == {"notes": ["written"]}
    assert client.get("/").json() == {"notes": ["written"]}
