//! Order statuses cross the database boundary as the domain enum. The
//! column's CHECK constraint (migration 0001) allows exactly the enum's
//! values, so a string the enum does not know is a broken invariant: it
//! fails decoding loudly instead of being read as some default.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};

use crate::domain::payment::OrderStatus;

impl Type<Postgres> for OrderStatus {
    fn type_info() -> PgTypeInfo {
        <str as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <str as Type<Postgres>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Postgres> for OrderStatus {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <&str as Decode<Postgres>>::decode(value)?;
        OrderStatus::parse(text).ok_or_else(|| format!("unknown order status {text:?}").into())
    }
}

impl Encode<'_, Postgres> for OrderStatus {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <&str as Encode<Postgres>>::encode(self.as_str(), buf)
    }
}

/// Refund statuses cross the boundary the same way (CHECK of migration 0018).
impl Type<Postgres> for crate::domain::refund::RefundStatus {
    fn type_info() -> PgTypeInfo {
        <str as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <str as Type<Postgres>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Postgres> for crate::domain::refund::RefundStatus {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <&str as Decode<Postgres>>::decode(value)?;
        crate::domain::refund::RefundStatus::parse(text)
            .ok_or_else(|| format!("unknown refund status {text:?}").into())
    }
}

impl Encode<'_, Postgres> for crate::domain::refund::RefundStatus {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <&str as Encode<Postgres>>::encode(self.as_str(), buf)
    }
}
