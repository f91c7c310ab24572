from tests.harness import Service, assert_ledger_invariants


async def test_one(service: Service) -> None:
    response = await service.classify("I love this blender, it works great")
    assert response.status_code == 200, response.text
    body = response.json()
    print(body)
    attempts = await service.attempts(body["id"])
    assert len(attempts) == len(body["attempts"])
    await assert_ledger_invariants(service.db)
