//! Logs and traces: `tracing` to stderr (text or JSON); the mesh's call spans kept in this
//! process's ring for `klf trace` (`--trace-buffer`, see `klf_router::trace_ring`) and exported
//! over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use std::sync::OnceLock;

use klf_actors::router::trace_ring::{self, SharedRing};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Format of the log lines on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The tracer provider of the mesh's call spans: the ring of `trace_buffer` spans (none when 0)
/// and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the OTLP exporter. `None` when neither.
pub fn call_span_provider(trace_buffer: usize) -> anyhow::Result<Option<SdkTracerProvider>> {
    let otlp = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok_and(|e| !e.is_empty());
    if trace_buffer == 0 && !otlp {
        return Ok(None);
    }
    let mut builder = SdkTracerProvider::builder().with_resource(
        opentelemetry_sdk::Resource::builder()
            .with_service_name("klf")
            .build(),
    );
    if trace_buffer > 0 {
        builder = builder.with_span_processor(SharedRing(trace_ring::install(trace_buffer)));
    }
    if otlp {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(Some(builder.build()))
}

/// Installs the subscriber: `RUST_LOG` filters (default `info`, quinn and rustls at `warn`).
///
/// The mesh's call spans (target `klf::trace`, one per routed call) go to the span ring and the
/// OpenTelemetry exporter only: the log output leaves them out, so with `--trace-buffer 0` and no
/// exporter they are never built.
pub fn init(format: LogFormat, trace_buffer: usize) -> anyhow::Result<()> {
    let filter = || {
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,quinn=warn,quinn_proto=warn,rustls=warn"))
    };
    let calls = |level: &str| format!("{}={level}", klf_actors::router::trace::TARGET).parse();
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter().add_directive(calls("off")?));
    let otel = match call_span_provider(trace_buffer)? {
        Some(provider) => {
            let tracer = provider.tracer("klf");
            let _ = PROVIDER.set(provider);
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    // The mesh's call spans only: other crates' spans (ractor's per-actor
                    // spans, say) would fill the ring and the exporter with noise.
                    .with_filter(
                        tracing_subscriber::filter::Targets::new()
                            .with_target(klf_actors::router::trace::TARGET, tracing::Level::INFO),
                    ),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()?;
    Ok(())
}

/// Flushes exported spans before the process exits.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown();
    }
}
