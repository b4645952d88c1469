"""A standalone upstream has no change streams (as a standalone mongod):
writes through the proxy are still visible at once, and writes that bypass
it are repaired by the periodic reconciliation scan."""


import pytest
from pymongo import MongoClient
from pymongo.operations import SearchIndexModel

from conftest import eventually, start_proxy, start_upstream



@pytest.fixture(scope="module")
def standalone():
    server = start_upstream("--standalone")
    yield f"mongodb://127.0.0.1:{server.port}/"
    server.stop()



def nearest(coll, point):
    return [d["_id"] for d in coll.find({"$like": {"vector": point, "n": 1}})]


def test_reconciliation_repairs_writes_that_bypass_the_proxy(standalone):
    proxy = start_proxy(standalone, "--reconcile-interval-ms", "300", log_level="info")
    try:
        with MongoClient(f"mongodb://{proxy.address}/") as client, \
                MongoClient(standalone, directConnection=True) as direct:
            coll, dcoll = client.rec.pts, direct.rec.pts
            coll.drop()
            coll.insert_many([{"_id": i, "p": [float(i), 0.0]} for i in range(50)])
            coll.create_search_index(SearchIndexModel(name="r", type="vectorSearch", definition={
                "fields": [{"type": "vector", "path": "p", "numDimensions": 2, "similarity": "euclidean"}]}))
            eventually(lambda: [i["status"] for i in coll.list_search_indexes()] == ["READY"])
            proxy.wait_for_line("reconciling by periodic scans")

            coll.insert_one({"_id": "through", "p": [500.0, 0.0]})
            assert nearest(coll, [500.0, 0.0]) == ["through"]  # write-through, at once

            dcoll.insert_one({"_id": "bypass", "p": [-500.0, 0.0]})
            dcoll.update_one({"_id": 7}, {"$set": {"p": [0.0, 900.0]}})
            dcoll.delete_one({"_id": 8})
            lag = eventually(lambda: nearest(coll, [-500.0, 0.0]) == ["bypass"]
                             and nearest(coll, [0.0, 900.0]) == [7]
                             and nearest(coll, [8.0, 0.0]) != [8])
            print(f"reconciliation repaired bypassing writes within {lag * 1000:.0f} ms")
            coll.drop_search_index("r")
            coll.drop()
    finally:
        proxy.stop()
