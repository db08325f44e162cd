"""The release path's SQL, built once as prepared statements (hot_sql.HotStatement).

Built once with bind parameters and run on the session's DBAPI connection (hot_sql.py). Through
the ORM each of a release's ~15 statements cost 110-170 us of CPU (statement construction, ORM
execute, entity loading, unit-of-work flush), ~3 ms a release in all; as prebuilt Core statements
20-30 us; on the DBAPI connection 2-5 us. Rows the decision only reads become transient ORM
objects (never added to a session).
"""

from __future__ import annotations

from sqlalchemy import bindparam, delete, func, insert, select, text, update

from .hot_sql import HotStatement
from .schema import AuthFailure, Device, Domain, Licence, LicenceDevice, MasterKey, Policy, ReleaseNonce

DOMAIN_ID = HotStatement(select(Domain.id).where(Domain.name == bindparam("name")))
DEVICE = HotStatement(
    select(Device.__table__).where(
        Device.domain_id == bindparam("domain_id"), Device.name == bindparam("name")
    )
)
FAILURES = HotStatement(
    select(func.count(AuthFailure.id)).where(
        AuthFailure.subject == bindparam("subject"), AuthFailure.at > bindparam("since")
    )
)
ADD_FAILURE = HotStatement(insert(AuthFailure), ("subject", "at"))
PURGE_FAILURES = HotStatement(
    delete(AuthFailure).where(
        AuthFailure.subject == bindparam("subject"), AuthFailure.at <= bindparam("before")
    )
)
# Names nobody owns are never proved again, so their rows are only cleared by this sweep.
SWEEP_FAILURES = HotStatement(delete(AuthFailure).where(AuthFailure.at <= bindparam("before")))
PURGE_NONCES = HotStatement(
    delete(ReleaseNonce).where(
        ReleaseNonce.device_id == bindparam("device_id"), ReleaseNonce.timestamp < bindparam("before")
    )
)
# A nonce already in the replay index inserts nothing (rowcount 0): one statement where a look-up
# and an insert were two (on PostgreSQL each is a round trip). SQLite and PostgreSQL both take it.
ADD_NONCE = HotStatement(
    text(
        "INSERT INTO release_nonces (device_id, nonce_hash, timestamp) "
        "VALUES (:device_id, :nonce_hash, :timestamp) ON CONFLICT (device_id, nonce_hash) DO NOTHING"
    )
)
POLICIES = HotStatement(
    select(Policy.__table__)
    .where(Policy.domain_id == bindparam("domain_id"), Policy.key_name == bindparam("key_name"))
    .order_by(Policy.name)
)
LICENCES = HotStatement(
    select(Licence.__table__)
    .where(Licence.policy_id == bindparam("policy_id"))
    .order_by(Licence.name)
    .with_for_update()
)
KNOWS = HotStatement(
    select(LicenceDevice.licence_id, LicenceDevice.device_id, LicenceDevice.mac).where(
        LicenceDevice.licence_id == bindparam("licence_id"), LicenceDevice.device_id == bindparam("device_id")
    )
)
ADD_LICENCE_DEVICE = HotStatement(insert(LicenceDevice), ("licence_id", "device_id", "mac"))
# Absolute, not uses + n: the row's MAC (row_macs.py) is computed over the new count.
USE_LICENCE = HotStatement(
    update(Licence)
    .where(Licence.id == bindparam("licence_id"))
    .values(uses=bindparam("uses"), device_count=bindparam("device_count"), mac=bindparam("mac"))
)
MASTER_KEY = HotStatement(
    select(MasterKey.__table__).where(
        MasterKey.domain_id == bindparam("domain_id"), MasterKey.name == bindparam("name")
    )
)
