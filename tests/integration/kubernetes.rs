//! The shipped Kubernetes manifests keep the admin port on loopback: the sidecar's
//! probes run inside the container, Prometheus scrapes the metrics-only listener
//! (`admin.metrics_listen`), no container, Service or NetworkPolicy opens the admin
//! port, and the NetworkPolicy admits only the inbound and metrics ports. Traffic
//! capture: an init container runs `octopus init` with just the capabilities it needs,
//! exempting the UID octopus runs as and the metrics port, and the app's probes go
//! through octopus (`/app-health/<name>` on the metrics port). The files under
//! `deploy/kubernetes/` are read as they are shipped.

use serde_yaml::Value;
use std::path::{Path, PathBuf};

/// The admin port: the image's HEALTHCHECK, the probes and docs/deploy.md assume it.
const ADMIN_PORT: u64 = 9901;
/// The inbound (mTLS) port peers' sidecars call.
const INBOUND_PORT: u64 = 15006;

/// The `field` numbers of the ports named `name` in a list of ports.
fn named_ports(ports: &Value, name: &str, field: &str) -> Vec<u64> {
    ports
        .as_sequence()
        .into_iter()
        .flatten()
        .filter(|p| p["name"].as_str() == Some(name))
        .filter_map(|p| p[field].as_u64())
        .collect()
}

fn manifest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// Every non-empty document of a multi-document YAML file.
fn yaml_documents(path: &Path) -> Vec<Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

/// (file, document) for every document of every manifest, in file name order.
fn manifests() -> Vec<(String, Value)> {
    let dir = manifest_dir();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    paths.sort();
    let mut docs = Vec::new();
    for path in paths {
        let file = path.display().to_string();
        for doc in yaml_documents(&path) {
            docs.push((file.clone(), doc));
        }
    }
    docs
}

/// A Deployment's containers and init containers (a native sidecar is one of the latter).
fn pod_containers(deployment: &Value) -> Vec<&Value> {
    let spec = &deployment["spec"]["template"]["spec"];
    spec["containers"]
        .as_sequence()
        .into_iter()
        .chain(spec["initContainers"].as_sequence())
        .flatten()
        .collect()
}

/// The numeric `key` of every entry of a list of ports (named ports are left out).
fn port_numbers(list: &Value, key: &str) -> Vec<u64> {
    list.as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|p| p[key].as_u64())
        .collect()
}

/// The sidecar's config from the ConfigMap, validated as `octopus validate --offline`
/// does (the TLS files it names exist only inside the pod).
fn sidecar_config(docs: &[(String, Value)]) -> octopus_config::Config {
    let text = docs
        .iter()
        .filter(|(_, d)| d["kind"].as_str() == Some("ConfigMap"))
        .find_map(|(_, d)| d["data"]["octopus.yaml"].as_str())
        .expect("no ConfigMap with data `octopus.yaml` under deploy/kubernetes");
    octopus_config::load_str_with(
        text,
        "octopus-configmap.yaml:octopus.yaml",
        octopus_config::Checks { offline: true },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn admin_port_stays_on_loopback_and_prometheus_scrapes_the_metrics_port() {
    let docs = manifests();

    // The sidecar's config: admin on loopback, a metrics-only listener on the pod IP.
    let config = sidecar_config(&docs);
    let admin = &config.admin;
    assert!(
        admin.listen.ip().is_some_and(|ip| ip.is_loopback()),
        "admin.listen is {}: it must stay on loopback (/config and /log-level have no authentication)",
        admin.listen
    );
    assert_eq!(
        u64::from(admin.listen.port),
        ADMIN_PORT,
        "the probes and the image's HEALTHCHECK use 127.0.0.1:{ADMIN_PORT}"
    );
    let metrics = admin
        .metrics_listen
        .as_ref()
        .expect("admin.metrics_listen is not set: Prometheus would have nothing to scrape");
    assert!(
        metrics.ip().is_some_and(|ip| !ip.is_loopback()),
        "admin.metrics_listen is {metrics}: Prometheus scrapes it on the pod IP"
    );
    let metrics_port = u64::from(metrics.port);
    assert_ne!(metrics_port, ADMIN_PORT);
    let metrics_port_text = metrics_port.to_string();
    let admin_url = format!("http://{}:{}/", admin.listen.host, admin.listen.port);

    // The Deployments: no container declares the admin port; the sidecar declares
    // `metrics`, is probed from inside, and the pod annotations point at `metrics`.
    let deployments: Vec<&(String, Value)> = docs
        .iter()
        .filter(|(_, d)| d["kind"].as_str() == Some("Deployment"))
        .collect();
    assert!(
        !deployments.is_empty(),
        "no Deployment under deploy/kubernetes"
    );
    for (file, deployment) in &deployments {
        let containers = pod_containers(deployment);
        for c in &containers {
            let declared = port_numbers(&c["ports"], "containerPort");
            assert!(
                !declared.contains(&ADMIN_PORT),
                "{file}: container {:?} declares the admin port {ADMIN_PORT}, which listens on loopback only",
                c["name"].as_str()
            );
        }
        let sidecar = containers
            .iter()
            .find(|c| c["name"].as_str() == Some("octopus"))
            .unwrap_or_else(|| panic!("{file}: no container named octopus"));
        let named_metrics = named_ports(&sidecar["ports"], "metrics", "containerPort");
        assert_eq!(
            named_metrics,
            [metrics_port],
            "{file}: the octopus container must declare port `metrics` = admin.metrics_listen's port"
        );
        assert!(
            port_numbers(&sidecar["ports"], "containerPort").contains(&INBOUND_PORT),
            "{file}: the octopus container does not declare the inbound port {INBOUND_PORT}"
        );
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let p = &sidecar[probe];
            if p.is_null() {
                assert_eq!(probe, "startupProbe", "{file}: the sidecar has no {probe}");
                continue;
            }
            for kind in ["httpGet", "tcpSocket", "grpc"] {
                let port = &p[kind]["port"];
                assert!(
                    port.as_u64() != Some(ADMIN_PORT) && port.as_str() != Some("admin"),
                    "{file}: the sidecar's {probe} uses {kind} on the admin port, which the kubelet cannot reach on loopback"
                );
            }
            let command: Vec<&str> = p["exec"]["command"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str())
                .collect();
            assert!(
                command.first().is_some_and(|c| c.ends_with("/octopus"))
                    && command.get(1) == Some(&"probe")
                    && command.iter().any(|a| a.starts_with(&admin_url)),
                "{file}: the sidecar's {probe} should be an exec probe `octopus probe {admin_url}...`, is {command:?}"
            );
        }
        let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(
            annotations["prometheus.io/port"].as_str(),
            Some(metrics_port_text.as_str()),
            "{file}: the prometheus.io/port annotation must name the metrics port"
        );
    }

    // The Prometheus Operator monitors scrape port `metrics`.
    let mut monitors = 0;
    for (file, d) in &docs {
        let endpoints = match d["kind"].as_str() {
            Some("PodMonitor") => &d["spec"]["podMetricsEndpoints"],
            Some("ServiceMonitor") => &d["spec"]["endpoints"],
            _ => continue,
        };
        monitors += 1;
        let ports: Vec<Option<&str>> = endpoints
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|e| e["port"].as_str())
            .collect();
        assert!(
            !ports.is_empty() && ports.iter().all(|p| *p == Some("metrics")),
            "{file}: scrapes ports {ports:?}, want only `metrics`"
        );
    }
    assert_eq!(monitors, 2, "want one PodMonitor and one ServiceMonitor");

    // The Service publishes `metrics` (for the ServiceMonitor), never the admin port.
    let mut services = 0;
    for (file, d) in &docs {
        if d["kind"].as_str() != Some("Service") {
            continue;
        }
        services += 1;
        for p in d["spec"]["ports"].as_sequence().into_iter().flatten() {
            assert!(
                p["port"].as_u64() != Some(ADMIN_PORT)
                    && p["targetPort"].as_u64() != Some(ADMIN_PORT)
                    && p["name"].as_str() != Some("admin"),
                "{file}: the Service publishes the admin port: {p:?}"
            );
        }
        let metrics_targets = named_ports(&d["spec"]["ports"], "metrics", "targetPort");
        assert_eq!(
            metrics_targets,
            [metrics_port],
            "{file}: the ServiceMonitor needs Service port `metrics` to the metrics_listen port"
        );
    }
    assert!(services > 0, "no Service under deploy/kubernetes");

    // The NetworkPolicy: selects the payments pods and admits 15006 and the metrics
    // port (from the monitoring namespace) and nothing else.
    let pod_labels = &deployments[0].1["spec"]["template"]["metadata"]["labels"];
    let policies: Vec<&(String, Value)> = docs
        .iter()
        .filter(|(_, d)| d["kind"].as_str() == Some("NetworkPolicy"))
        .collect();
    assert!(
        !policies.is_empty(),
        "no NetworkPolicy under deploy/kubernetes"
    );
    let mut ingress_ports = Vec::new();
    for (file, policy) in &policies {
        let selector = policy["spec"]["podSelector"]["matchLabels"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{file}: no podSelector.matchLabels"));
        assert!(!selector.is_empty(), "{file}: the policy selects every pod");
        for (k, v) in selector {
            let key = k.as_str().unwrap_or_default();
            assert_eq!(
                pod_labels[key].as_str(),
                v.as_str(),
                "{file}: selects {key}={v:?}, which the payments pods do not carry"
            );
        }
        assert!(
            policy["spec"]["policyTypes"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(|t| t.as_str() == Some("Ingress")),
            "{file}: policyTypes does not list Ingress"
        );
        let rules = policy["spec"]["ingress"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{file}: no ingress rules"));
        for rule in rules {
            let ports = port_numbers(&rule["ports"], "port");
            assert!(
                !ports.is_empty()
                    && rule["ports"].as_sequence().map_or(0, |s| s.len()) == ports.len(),
                "{file}: every ingress rule must list its ports, as numbers: {rule:?}"
            );
            let from = rule["from"].as_sequence();
            assert!(
                from.is_some_and(|f| !f.is_empty()),
                "{file}: an ingress rule without `from` admits every source: {rule:?}"
            );
            if ports.contains(&metrics_port) {
                assert!(
                    from.into_iter().flatten().all(|peer| {
                        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                            .as_str()
                            == Some("monitoring")
                    }),
                    "{file}: the metrics port must be admitted from the monitoring namespace only: {rule:?}"
                );
            }
            ingress_ports.extend(ports);
        }
    }
    assert!(
        ingress_ports.contains(&INBOUND_PORT),
        "the NetworkPolicy does not admit the inbound port {INBOUND_PORT}: {ingress_ports:?}"
    );
    assert!(
        ingress_ports.contains(&metrics_port),
        "the NetworkPolicy does not admit the metrics port {metrics_port}: {ingress_ports:?}"
    );
    assert!(
        !ingress_ports.contains(&ADMIN_PORT),
        "the NetworkPolicy admits the admin port {ADMIN_PORT}: {ingress_ports:?}"
    );
    ingress_ports.sort_unstable();
    ingress_ports.dedup();
    let mut wanted = vec![INBOUND_PORT, metrics_port];
    wanted.sort_unstable();
    assert_eq!(
        ingress_ports, wanted,
        "the NetworkPolicy admits more than the inbound and metrics ports"
    );
}

/// The value of `--flag` in an argument list (`--flag VALUE` or `--flag=VALUE`).
fn flag<'a>(args: &'a [&'a str], name: &str) -> Option<&'a str> {
    let eq = format!("{name}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if *a == name {
            args.get(i + 1).copied()
        } else {
            a.strip_prefix(eq.as_str())
        }
    })
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .collect()
}

/// A container's effective UID: its own `runAsUser`, else the pod's.
fn run_as_user(container: &Value, pod: &Value) -> Option<u64> {
    container["securityContext"]["runAsUser"]
        .as_u64()
        .or_else(|| pod["securityContext"]["runAsUser"].as_u64())
}

#[test]
fn capture_init_container_and_app_probes_through_the_metrics_port() {
    let docs = manifests();
    let config = sidecar_config(&docs);
    let metrics_port = u64::from(
        config
            .admin
            .metrics_listen
            .as_ref()
            .expect("admin.metrics_listen is not set: the kubelet's app probes need it")
            .port,
    );
    let app_probes = &config.admin.app_probes;
    assert!(
        !app_probes.is_empty(),
        "admin.app_probes is empty: the app's probes have nothing to run"
    );
    let inbound_port = config.inbound.as_ref().map(|i| u64::from(i.listen.port));
    let outbound_port = config.outbound.as_ref().map(|o| u64::from(o.listen.port));

    let mut deployments = 0;
    for (file, deployment) in &docs {
        if deployment["kind"].as_str() != Some("Deployment") {
            continue;
        }
        deployments += 1;
        let pod = &deployment["spec"]["template"]["spec"];
        let inits: Vec<&Value> = pod["initContainers"]
            .as_sequence()
            .into_iter()
            .flatten()
            .collect();

        // The init container: `octopus init`, root with NET_ADMIN and NET_RAW only.
        let (init_at, init) = inits
            .iter()
            .enumerate()
            .find(|(_, c)| strings(&c["args"]).first() == Some(&"init"))
            .unwrap_or_else(|| panic!("{file}: no init container runs `octopus init`"));
        let name = init["name"].as_str().unwrap_or_default();
        let sc = &init["securityContext"];
        let mut added = strings(&sc["capabilities"]["add"]);
        added.sort_unstable();
        assert_eq!(
            added,
            ["NET_ADMIN", "NET_RAW"],
            "{file}: {name} capabilities.add"
        );
        assert_eq!(
            strings(&sc["capabilities"]["drop"]),
            ["ALL"],
            "{file}: {name} must drop every other capability"
        );
        assert_eq!(
            sc["runAsUser"].as_u64(),
            Some(0),
            "{file}: {name} runs iptables as root"
        );
        assert_eq!(
            sc["runAsNonRoot"].as_bool(),
            Some(false),
            "{file}: {name} must override the pod's runAsNonRoot"
        );
        assert!(
            init["restartPolicy"].is_null(),
            "{file}: {name} is a one-shot init container, not a sidecar"
        );

        let sidecar = pod_containers(deployment)
            .into_iter()
            .find(|c| c["name"].as_str() == Some("octopus"))
            .unwrap_or_else(|| panic!("{file}: no container named octopus"));
        // The same binary, from the image's `init` target (octopus + iptables).
        assert_eq!(
            init["image"].as_str().map(|i| i.replace("-init", "")),
            sidecar["image"].as_str().map(String::from),
            "{file}: {name} runs `octopus init` from the octopus image's init target"
        );
        let dockerfile = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/docker/Dockerfile"),
        )
        .unwrap();
        assert!(
            dockerfile.contains("AS init")
                && dockerfile.contains("install -y --no-install-recommends iptables"),
            "the Dockerfile has an init target with iptables"
        );
        // A native sidecar is an init container too: capture must be in place first.
        if let Some(sidecar_at) = inits
            .iter()
            .position(|c| c["name"].as_str() == Some("octopus"))
        {
            assert!(
                init_at < sidecar_at,
                "{file}: {name} must run before the octopus sidecar"
            );
        }

        // Its flags agree with the config and with the UID octopus runs as.
        let args = strings(&init["args"]);
        let number = |f: &str| {
            flag(&args, f).map(|v| {
                v.parse::<u64>()
                    .unwrap_or_else(|e| panic!("{file}: {name} {f} {v}: {e}"))
            })
        };
        let proxy_uid = number("--proxy-uid")
            .unwrap_or_else(|| panic!("{file}: {name} does not set --proxy-uid"));
        let sidecar_uid = sidecar["securityContext"]["runAsUser"].as_u64();
        assert_eq!(
            sidecar_uid,
            Some(proxy_uid),
            "{file}: the octopus container's runAsUser must be --proxy-uid, or octopus would capture its own connections"
        );
        for c in pod["containers"].as_sequence().into_iter().flatten() {
            if c["name"].as_str() != Some("octopus") {
                assert_ne!(
                    run_as_user(c, pod),
                    Some(proxy_uid),
                    "{file}: container {:?} runs as --proxy-uid, so its traffic would bypass octopus",
                    c["name"].as_str()
                );
            }
        }
        assert_eq!(
            number("--inbound-port"),
            inbound_port,
            "{file}: {name} --inbound-port vs inbound.listen"
        );
        assert_eq!(
            number("--outbound-port"),
            outbound_port,
            "{file}: {name} --outbound-port vs outbound.listen"
        );
        let skipped: Vec<u64> = flag(&args, "--skip-inbound-ports")
            .unwrap_or_default()
            .split(',')
            .filter_map(|p| p.trim().parse().ok())
            .collect();
        assert!(
            skipped.contains(&metrics_port),
            "{file}: {name} must leave the metrics/probe port {metrics_port} out of capture (--skip-inbound-ports), or the kubelet's probes and Prometheus reach the mTLS-only inbound listener"
        );

        // The app's probes: httpGet on the metrics port, naming configured app probes;
        // no exec probe, which would need octopus in the app's image.
        let apps: Vec<&Value> = pod["containers"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter(|c| c["name"].as_str() != Some("octopus"))
            .collect();
        assert!(!apps.is_empty(), "{file}: no app container");
        for app in apps {
            let app_name = app["name"].as_str().unwrap_or_default();
            for probe in ["readinessProbe", "livenessProbe"] {
                let p = &app[probe];
                assert!(!p.is_null(), "{file}: {app_name} has no {probe}");
                assert!(
                    p["exec"].is_null(),
                    "{file}: {app_name}'s {probe} is an exec probe; the app's image has no octopus"
                );
                let get = &p["httpGet"];
                assert_eq!(
                    get["port"].as_u64(),
                    Some(metrics_port),
                    "{file}: {app_name}'s {probe} must GET admin.metrics_listen's port"
                );
                let path = get["path"].as_str().unwrap_or_default();
                let probe_name = path.strip_prefix("/app-health/").unwrap_or_else(|| {
                    panic!("{file}: {app_name}'s {probe} GETs {path:?}, not /app-health/<name>")
                });
                let configured = app_probes.get(probe_name).unwrap_or_else(|| {
                    panic!("{file}: {app_name}'s {probe} names {probe_name:?}, which admin.app_probes does not configure")
                });
                // The kubelet must wait longer than octopus' own probe, or a slow app
                // shows as a kubelet timeout instead of octopus' 503 and its reason.
                let kubelet_timeout = p["timeoutSeconds"].as_u64().unwrap_or(1);
                assert!(
                    std::time::Duration::from_secs(kubelet_timeout) > configured.timeout.get(),
                    "{file}: {app_name}'s {probe} timeoutSeconds ({kubelet_timeout}) must exceed admin.app_probes.{probe_name}.timeout ({})",
                    configured.timeout
                );
            }
        }
    }
    assert!(deployments > 0, "no Deployment under deploy/kubernetes");
}
