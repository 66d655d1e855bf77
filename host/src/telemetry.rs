//! Logging: JSON lines by default (one field per span attribute, so every
//! line inside a stage carries traceId, eventId, parentEventId...), or a
//! human format for terminals.

use tracing_subscriber::{fmt, EnvFilter};

pub fn init(json: bool) {
    let filter = EnvFilter::try_from_env("PAYNODE_LOG").unwrap_or_else(|_| {
        EnvFilter::new("info,rdkafka=warn,sqlx=warn,wasmtime=warn,cranelift=warn")
    });
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.compact().try_init()
    };
    // Tests start several nodes in one process; the first subscriber wins.
    let _ = result;
}
