"""Django's Redis cache backend, keeping one redis-py client per connection pool.

Django's client builds a new `redis.Redis` for every cache operation, and redis-py's constructor
copies its table of response callbacks each time: that costs more CPU than the round trip to
Redis itself (a session read on every request). A `redis.Redis` holds no connection of its own,
only the pool's, so one per pool behaves the same. `settings.CACHES` picks this backend whenever
`CACHE_URL` names Django's Redis backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.core.cache.backends import redis

if TYPE_CHECKING:
    from redis import ConnectionPool, Redis


class RedisCacheClient(redis.RedisCacheClient):
    if TYPE_CHECKING:
        # Django's private members this builds on (django-stubs describes only the public API).
        _client: type[Redis]

        def _get_connection_pool(self, write: bool) -> ConnectionPool: ...

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, Any] = {}

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        # Django keeps each pool for the life of the cache object, so its id is a stable key.
        pool = self._get_connection_pool(write)
        client = self._clients.get(id(pool))
        if client is None:
            client = self._clients[id(pool)] = self._client(connection_pool=pool)
        return client


class RedisCache(redis.RedisCache):
    def __init__(self, server: str | list[str], params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = RedisCacheClient
