"""The test services themselves: a real PostgreSQL and a real S3 endpoint are reachable."""

from __future__ import annotations

import boto3
import psycopg


def test_postgres_accepts_connections_and_copy(postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE people (id int, name text)")
        with conn.cursor() as cur:
            with cur.copy("COPY people (id, name) FROM STDIN") as copy:
                copy.write_row((1, "Zoë"))
                copy.write_row((2, "李"))
            cur.execute("SELECT count(*), string_agg(name, ',' ORDER BY id) FROM people")
            assert cur.fetchone() == (2, "Zoë,李")


def test_s3_endpoint_serves_buckets_over_http(s3_endpoint: str) -> None:
    assert s3_endpoint.startswith("http://127.0.0.1:")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="services-check")
    client.put_object(Bucket="services-check", Key="a/b.txt", Body=b"hello")
    assert client.get_object(Bucket="services-check", Key="a/b.txt")["Body"].read() == b"hello"
