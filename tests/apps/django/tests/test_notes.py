import pytest
from notes.models import Note


@pytest.mark.django_db
def test_health_counts_the_notes(client):
    Note.objects.create(text="first")
    answer = client.get("/health")
    assert answer.status_code == 200
    assert answer.json()["notes"] == 1
