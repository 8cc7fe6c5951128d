"""Read what the service stored, as a test checks it: plain SQL on a fresh connection."""

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


async def rows(url: str, sql: str, **params) -> list[dict]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return [dict(r._mapping) for r in (await conn.execute(text(sql), params))]
    finally:
        await engine.dispose()
