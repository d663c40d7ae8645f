//! `spawner proxy`: Spawner's proxy and sweeper on Kubernetes, and its REST
//! API when given an API token.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::config::ProxyConfig;
use crate::k8s::control::CreateLimits;
use crate::k8s::leader::LeaseSettings;
use crate::k8s::peers::PeerOptions;
use crate::k8s::serve::{self, ApiOptions, ProxyOptions, Replicas};
use crate::secret::Secret;
use crate::token::TokenKey;

/// Route browsers to SessionLivedBackend Pods, with the auth plugin on every
/// request, and terminate idle backends.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// The namespace whose backends to serve.
    #[arg(long, env = "SPAWNER_NAMESPACE")]
    pub namespace: String,
    /// Address to listen on.
    #[arg(long, env = "SPAWNER_LISTEN", default_value = "0.0.0.0:8080", value_parser = crate::config::listen_arg)]
    pub listen: SocketAddr,
    /// Capability-token secret (the one tokens are minted with, e.g. by
    /// `spawner token mint`).
    #[arg(long, env = "SPAWNER_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Secret,
    /// A secret tokens were signed with before --token-secret: tokens it
    /// signed still verify, and it signs none (rotating the secret; see the
    /// README). Repeat, or comma-separate in the environment.
    #[arg(long = "previous-token-secret", env = "SPAWNER_PREVIOUS_TOKEN_SECRETS", hide_env_values = true, value_delimiter = ',')]
    pub previous_token_secrets: Vec<Secret>,
    /// Idle grace period, in seconds, for backends whose spec gives none
    /// (1 to 4294967295, what a spec can hold: with 0 every such backend
    /// would be idle at the first sweep, and every create without one
    /// refused).
    #[arg(long, env = "SPAWNER_DEFAULT_GRACE_SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=crate::backends::MAX_GRACE_SECONDS))]
    pub default_grace_seconds: u64,
    /// Milliseconds between sweeps (100 to a day).
    #[arg(long, env = "SPAWNER_SWEEP_INTERVAL_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(100..=crate::config::MAX_TIMEOUT_SECONDS * 1000))]
    pub sweep_interval_ms: u64,
    /// Log idle verdicts instead of terminating.
    #[arg(long, env = "SPAWNER_DRY_RUN")]
    pub dry_run: bool,
    /// `X-Forwarded-Proto` to send (`https` behind a TLS terminator).
    #[arg(long, env = "SPAWNER_FORWARDED_PROTO", value_enum, default_value_t = crate::config::Scheme::Http)]
    pub forwarded_proto: crate::config::Scheme,
    /// Serve the REST API under /api/, for callers presenting this bearer
    /// token (at least 16 bytes). Without it, the API is off.
    #[arg(long, env = "SPAWNER_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<Secret>,
    /// This proxy's address as browsers reach it, for the URLs the API
    /// returns (e.g. https://spawner.example.com). Default: http://LISTEN.
    #[arg(long, env = "SPAWNER_PUBLIC_URL", value_parser = crate::config::public_url_arg)]
    pub public_url: Option<String>,
    /// Live backends the API may have at once (creates beyond are refused
    /// with 429; at least 1).
    #[arg(long, env = "SPAWNER_MAX_BACKENDS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_backends: u64,
    /// Only images under these prefixes may be created through the API
    /// (repeat, or comma-separate in the environment), e.g.
    /// `ghcr.io/acme/`. Default: any image.
    #[arg(long, env = "SPAWNER_IMAGE_PREFIXES", value_delimiter = ',', value_parser = image_prefix_arg)]
    pub image_prefix: Vec<String>,
    /// Default lifetime, in seconds, of the capability tokens the API mints.
    #[arg(long, env = "SPAWNER_TOKEN_TTL_SECONDS", default_value_t = 86_400)]
    pub token_ttl_seconds: u64,
    /// Host routing: `{name}.{domain}` also reaches backend `name` (point a
    /// wildcard DNS record and certificate at the proxy), and the API's
    /// URLs use it.
    #[arg(long, env = "SPAWNER_HOST_DOMAIN", value_parser = crate::config::host_domain_arg)]
    pub host_domain: Option<String>,
    /// The auth and idle plugins.
    #[command(flatten)]
    pub plugins: super::PluginMapArgs,
    /// Limits of plugin calls (auth and idle run here).
    #[command(flatten)]
    pub plugin_limits: super::PluginLimitArgs,
    /// Several replicas: the label selector of the replicas' Pods (in the
    /// namespace of --plugins-namespace). The replica holding the sweeper
    /// Lease sweeps, asking the others for their activity first.
    #[arg(long, env = "SPAWNER_PEER_SELECTOR")]
    pub peer_selector: Option<String>,
    /// The token replicas present to each other (at least 16 bytes).
    #[arg(long, env = "SPAWNER_PEER_TOKEN", hide_env_values = true)]
    pub peer_token: Option<Secret>,
    /// Where this replica answers the others (not exposed by the Service).
    #[arg(long, env = "SPAWNER_PEER_LISTEN", default_value = "0.0.0.0:9091", value_parser = crate::config::listen_arg)]
    pub peer_listen: SocketAddr,
    /// The Lease the replicas compete for to sweep.
    #[arg(long, env = "SPAWNER_SWEEPER_LEASE", default_value = "spawner-proxy-sweeper")]
    pub sweeper_lease: String,
    /// Serve /metrics on this address instead of the public listener, with
    /// a /healthz of its own, for a liveness probe (e.g. 0.0.0.0:9090, not
    /// exposed by the Service); the public listener keeps its /healthz,
    /// which fails while the proxy drains.
    #[arg(long, env = "SPAWNER_METRICS_LISTEN", value_parser = crate::config::listen_arg)]
    pub metrics_listen: Option<SocketAddr>,
    /// This replica's identity (its Pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// On SIGTERM, seconds to go on accepting (/healthz answering 503), while
    /// Kubernetes' endpoint update stops new connections reaching this Pod.
    #[arg(long, env = "SPAWNER_SHUTDOWN_DELAY_SECONDS", default_value_t = 5)]
    pub shutdown_delay_seconds: u64,
    /// Then, seconds to wait for requests in flight to finish and WebSockets
    /// to close (with status 1001, going away; keep the sum
    /// under the Pod's terminationGracePeriodSeconds, 30 by default).
    #[arg(long, env = "SPAWNER_DRAIN_SECONDS", default_value_t = 20)]
    pub drain_seconds: u64,
    /// Cookie the proxy moves a browser's token into (and strips before
    /// forwarding); an auth plugin that reads another name must be told
    /// this one.
    #[arg(long, env = "SPAWNER_TOKEN_COOKIE", default_value_t = ProxyConfig::default().token_cookie)]
    pub token_cookie: String,
    /// Query parameter the API's URLs carry the token in (moved into the
    /// cookie, and stripped, by the proxy).
    #[arg(long, env = "SPAWNER_TOKEN_QUERY_PARAM", default_value_t = ProxyConfig::default().token_query_param)]
    pub token_query_param: String,
    /// Open client connections at most; further ones wait in the backlog.
    #[arg(long, env = "SPAWNER_MAX_CONNECTIONS", default_value_t = ProxyConfig::default().max_connections)]
    pub max_connections: usize,
    /// Time a client has to send its request headers, in milliseconds.
    #[arg(long, env = "SPAWNER_HEADER_READ_TIMEOUT_MS", default_value_t = ProxyConfig::default().header_read_timeout_ms)]
    pub header_read_timeout_ms: u64,
    /// Largest request head (line and headers) accepted, in bytes.
    #[arg(long, env = "SPAWNER_MAX_HEADER_BYTES", default_value_t = ProxyConfig::default().max_header_bytes)]
    pub max_header_bytes: usize,
    /// Time a backend has to answer a proxied request with its response
    /// head once the proxy has read the request's body (or a WebSocket
    /// upgrade, at most 30 s), in seconds: then 504; also the longest an
    /// upload may make no progress (then 408, or 504 if the backend
    /// stopped reading).
    #[arg(long, env = "SPAWNER_RESPONSE_TIMEOUT_SECONDS", default_value_t = ProxyConfig::default().response_timeout_seconds)]
    pub response_timeout_seconds: u64,
    /// Connections the kernel queues before they are accepted.
    #[arg(long, env = "SPAWNER_LISTEN_BACKLOG", default_value_t = ProxyConfig::default().listen_backlog)]
    pub listen_backlog: u32,
    /// A proxy in front of this one (the Ingress controller's Pods, a load
    /// balancer): an address or range (`10.0.0.0/8`) whose
    /// `X-Forwarded-For` names the client, for backends' `X-Forwarded-For`
    /// and `X-Real-IP`. Repeat, or comma-separate in the environment.
    #[arg(long = "trusted-proxy", value_name = "CIDR", env = "SPAWNER_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
}

impl ProxyArgs {
    /// The proxy's limits and names, as `spawner dev` has them in its
    /// config file's `[proxy]`, checked alike.
    fn proxy_config(&self) -> anyhow::Result<ProxyConfig> {
        let config = ProxyConfig {
            max_connections: self.max_connections,
            header_read_timeout_ms: self.header_read_timeout_ms,
            max_header_bytes: self.max_header_bytes,
            response_timeout_seconds: self.response_timeout_seconds,
            listen_backlog: self.listen_backlog,
            forwarded_proto: self.forwarded_proto,
            token_cookie: self.token_cookie.clone(),
            token_query_param: self.token_query_param.clone(),
            trusted_proxies: self.trusted_proxies.clone().try_into().map_err(|e| anyhow::anyhow!("--trusted-proxy: {e}"))?,
        };
        config.validate(|field| format!("--{field}")).map_err(anyhow::Error::msg)?;
        Ok(config)
    }
}

/// One `--image-prefix`: anything but deploy/'s placeholder, left in the
/// manifest by mistake (every create would then be refused, with the
/// placeholder as the allowed prefix).
fn image_prefix_arg(prefix: &str) -> Result<String, String> {
    if prefix == "SPAWNER_IMAGE_PREFIXES" {
        return Err("this is deploy/proxy/02-deployment.yaml's placeholder: put where backends' images may come from, e.g. ghcr.io/acme/ (README, Kubernetes)".into());
    }
    Ok(prefix.to_string())
}

/// The replicas settings, when `--peer-selector` asks for them.
fn replicas(args: &ProxyArgs) -> anyhow::Result<Option<Replicas>> {
    let Some(selector) = args.peer_selector.clone() else { return Ok(None) };
    let token = match &args.peer_token {
        Some(t) if t.expose().len() >= 16 => t.clone(),
        _ => anyhow::bail!("--peer-selector needs --peer-token (SPAWNER_PEER_TOKEN), at least 16 bytes, the same on every replica"),
    };
    let Some(identity) = args.identity.clone() else {
        anyhow::bail!("--peer-selector needs --identity (POD_NAME): this replica's Pod name, so it does not ask itself");
    };
    let namespace = args.plugins.plugins_namespace.clone();
    let lease = LeaseSettings {
        namespace: namespace.clone(),
        name: args.sweeper_lease.clone(),
        identity: identity.clone(),
        duration_seconds: 15,
        grace_seconds: crate::k8s::leader::LEASE_GRACE_SECONDS,
    };
    let peers = PeerOptions { namespace, selector, identity, token, listen: args.peer_listen };
    Ok(Some(Replicas { peers, lease }))
}

/// Serves until SIGINT or SIGTERM.
pub fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let previous_secrets = crate::config::listed_secrets(&args.previous_token_secrets);
    if let Some(why) =
        crate::config::previous_secrets_problem(Some(&args.token_secret), &previous_secrets, "--token-secret", "--previous-token-secret")
    {
        anyhow::bail!(why);
    }
    let tokens = Arc::new(TokenKey::configured(&args.token_secret, &previous_secrets).context("--token-secret")?);
    let proxy = args.proxy_config()?;
    let replicas = replicas(&args)?;
    let api = match args.api_token.clone().filter(|t| !t.expose().is_empty()) {
        Some(t) if t.expose().len() < 16 => anyhow::bail!("--api-token must be at least 16 bytes (try `openssl rand -hex 32`)"),
        Some(t) => {
            if !crate::token::TTL_SECONDS.contains(&args.token_ttl_seconds) {
                anyhow::bail!(
                    "--token-ttl-seconds must be between 1 and {} (30 days), got {}",
                    crate::token::MAX_TTL_SECONDS,
                    args.token_ttl_seconds
                );
            }
            let public_url = args.public_url.unwrap_or_else(|| format!("http://{}", args.listen));
            if let Some(why) = args.host_domain.as_deref().and_then(|d| crate::config::public_url_conflict(&public_url, d)) {
                anyhow::bail!("--{why}");
            }
            let limits = CreateLimits {
                max_backends: usize::try_from(args.max_backends).unwrap_or(usize::MAX),
                image_prefixes: args.image_prefix.clone(),
            };
            Some(ApiOptions { api_token: t, public_url, token_ttl_seconds: args.token_ttl_seconds, limits })
        }
        None => {
            tracing::info!("the REST API is off (no --api-token): serving the proxy, /metrics and /healthz");
            None
        }
    };
    let options = ProxyOptions {
        replicas,
        namespace: args.namespace,
        listen: args.listen,
        tokens,
        default_grace_seconds: args.default_grace_seconds,
        sweep_interval: Duration::from_millis(args.sweep_interval_ms),
        dry_run: args.dry_run,
        proxy,
        api,
        plugins: args.plugins.configmap(),
        metrics_listen: args.metrics_listen,
        stopping: crate::server::Stopping {
            delay: Duration::from_secs(args.shutdown_delay_seconds),
            drain: Duration::from_secs(args.drain_seconds),
        },
        plugin_limits: args.plugin_limits.runtime(),
        host_domain: args.host_domain,
    };
    crate::dev::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let client = kube::Client::try_default().await.context("connecting to Kubernetes (kubeconfig or in-cluster)")?;
        let running = serve::start(client, options).await?;
        tracing::info!(listen = %running.addr, "spawner proxy is ready");
        crate::server::stop_signal().await?;
        tracing::info!("stopping: draining requests in flight (a second signal stops at once)");
        tokio::select! {
            () = running.stop() => {}
            r = crate::server::stop_signal() => r?,
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    fn parse(extra: &[&str]) -> Result<super::ProxyArgs, String> {
        let base = ["spawner", "proxy", "--namespace", "n", "--token-secret", "0123456789abcdef0123"];
        match crate::cli::Cli::try_parse_from(base.iter().chain(extra)).map_err(|e| e.to_string())?.command {
            crate::cli::Command::Proxy(args) => Ok(*args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn values_out_of_range_are_refused_naming_the_flag() {
        for (flag, bad) in [
            ("--default-grace-seconds", "0"),
            ("--default-grace-seconds", "4294967296"),
            ("--max-backends", "0"),
            ("--sweep-interval-ms", "0"),
            ("--sweep-interval-ms", "86400001"),
        ] {
            let e = parse(&[flag, bad]).map(|_| ()).unwrap_err();
            assert!(e.contains(&format!("{bad} is not in")) && e.contains(flag), "{flag} {bad}: {e}");
        }
        for (flags, says) in [
            (&["--token-cookie", "a b"][..], "--token-cookie must be letters"),
            (&["--token-cookie", "__Secure-t"], "--forwarded-proto = \"https\""),
            (&["--token-query-param", ""], "--token-query-param must be letters"),
            (&["--max-header-bytes", "100"], "--max-header-bytes must be between 8192"),
            (&["--header-read-timeout-ms", "0"], "--header-read-timeout-ms must be between 1"),
            (&["--response-timeout-seconds", "0"], "--response-timeout-seconds must be between 1 and 86400, got 0"),
            (&["--max-connections", "0"], "--max-connections and --listen-backlog must be positive"),
            (
                &["--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "ingress"],
                "--trusted-proxy: \"ingress\" is neither an address nor a range",
            ),
        ] {
            let e = parse(flags).unwrap().proxy_config().unwrap_err().to_string();
            assert!(e.contains(says), "{flags:?}: {e}");
        }
        let e = parse(&["--image-prefix", "ghcr.io/acme/,SPAWNER_IMAGE_PREFIXES"]).map(|_| ()).unwrap_err();
        assert!(e.contains("--image-prefix") && e.contains("placeholder") && e.contains("e.g. ghcr.io/acme/"), "{e}");
        assert_eq!(parse(&["--image-prefix", "ghcr.io/acme/,quay.io/x/"]).unwrap().image_prefix, ["ghcr.io/acme/", "quay.io/x/"]);
    }

    #[test]
    fn the_proxy_takes_the_cookie_and_limits_it_is_given() {
        let args =
            parse(&["--token-cookie", "acme-token", "--token-query-param", "t", "--max-connections", "7", "--forwarded-proto", "https"]);
        let proxy = args.unwrap().proxy_config().unwrap();
        assert_eq!((proxy.token_cookie.as_str(), proxy.token_query_param.as_str(), proxy.max_connections), ("acme-token", "t", 7));
        assert_eq!(proxy.forwarded_proto, crate::config::Scheme::Https);
        let trusting = parse(&["--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "192.168.1.10"]).unwrap().proxy_config().unwrap();
        assert_eq!(trusting.trusted_proxies, vec!["10.0.0.0/8".to_string(), "192.168.1.10".into()].try_into().unwrap());
        let defaults = parse(&[]).unwrap().proxy_config().unwrap();
        assert_eq!(defaults, crate::config::ProxyConfig::default());
    }
}
