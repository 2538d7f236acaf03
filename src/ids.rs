//! Newtype ids, one per table, so an `AssistantId` can never be passed where a
//! `SessionId` is meant. They are `BIGINT` in both backends and plain numbers
//! in JSON.

use std::fmt;

use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::BigInt;
use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            Serialize, Deserialize, AsExpression, FromSqlRow, utoipa::ToSchema,
        )]
        #[diesel(sql_type = BigInt)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl<DB: Backend> ToSql<BigInt, DB> for $name
        where
            i64: ToSql<BigInt, DB>,
        {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, DB>) -> serialize::Result {
                self.0.to_sql(out)
            }
        }

        impl<DB: Backend> FromSql<BigInt, DB> for $name
        where
            i64: FromSql<BigInt, DB>,
        {
            fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
                i64::from_sql(bytes).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// An organization (tenant); every other row belongs to one.
    OrgId
);
id_type!(
    /// A person who signs in to the API or the console.
    UserId
);
id_type!(
    /// An organization API key.
    ApiKeyId
);
id_type!(
    /// An assistant configuration.
    AssistantId
);
id_type!(
    /// A voice session.
    SessionId
);
id_type!(
    /// One stored message of a session's transcript.
    MessageId
);
id_type!(
    /// A chat room (direct or group).
    RoomId
);
id_type!(
    /// One message of a chat room.
    RoomMessageId
);
