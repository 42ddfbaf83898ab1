{{/*
Values of Kepler's charts that mean nothing here, refused with the key to use instead.
values.schema.json admits them (so that the message here is the one shown) and refuses every
other unknown key itself. Checked by configmap.yaml, rendered in every mode.
*/}}

{{- define "otel-kepler.checkValues" -}}
{{- $v := .Values -}}
{{- $moved := dict "hostPID" "hostPID" "tolerations" "tolerations" "nodeSelector" "nodeSelector" "affinity" "affinity" "securityContext" "securityContext" "resources" "resources" "livenessProbe" "livenessProbe" "readinessProbe" "readinessProbe" -}}
{{- range $key, $_ := $v.daemonset -}}
{{- if hasKey $moved $key -}}
{{- fail (printf "daemonset.%s is a key of Kepler's chart: this chart has the DaemonSet's settings at the top level, use %s" $key (get $moved $key)) -}}
{{- else -}}
{{- fail (printf "daemonset.%s is a key of Kepler's chart and has no counterpart here (the DaemonSet's settings are top-level keys: hostPID, tolerations, nodeSelector, affinity, securityContext, resources, livenessProbe, readinessProbe)" $key) -}}
{{- end -}}
{{- end -}}
{{- if hasKey $v "daemonset" -}}
{{- fail "daemonset is a key of Kepler's chart: this chart has the DaemonSet's settings at the top level (hostPID, tolerations, nodeSelector, affinity, securityContext, resources, livenessProbe, readinessProbe)" -}}
{{- end -}}
{{- if hasKey $v "namespace" -}}
{{- fail "namespace (namespace.create, namespace.name) is a key of Kepler's chart: this chart installs into the release's namespace, use helm install --namespace NAME --create-namespace" -}}
{{- end -}}
{{- if hasKey $v "canMount" -}}
{{- fail "canMount.usrSrc is a key of Kepler's chart: use hostPaths.usrSrc (empty: the host's /usr/src is not mounted; bcc then needs the kernel's /sys/kernel/kheaders.tar.xz)" -}}
{{- end -}}
{{- if hasKey $v "configOverrides" -}}
{{- fail "configOverrides is no longer a key: use config, which deep-merges into the default pipeline (e.g. --set config.service.interval=10s)" -}}
{{- end -}}
{{- if hasKey $v.service "targetPort" -}}
{{- fail "service.targetPort is a key of Kepler's chart: the Service always targets the agent's port (named kepler-metrics); use service.port to move both" -}}
{{- end -}}
{{- if hasKey $v.service "protocol" -}}
{{- fail "service.protocol is a key of Kepler's chart: the metrics port is TCP only; remove it" -}}
{{- end -}}
{{- if hasKey $v.redfish "fileContent" -}}
{{- fail "redfish.fileContent (Kepler's node,username,password,URL lines) is not used: set redfish.endpoint (one BMC per node: https://${env:NODE_NAME}-bmc.example.net), redfish.username and redfish.passwordSecret (an existing Secret) or redfish.password" -}}
{{- end -}}
{{- if and $v.redfish.enabled (not $v.redfish.endpoint) -}}
{{- fail "redfish.enabled needs redfish.endpoint: the BMC's URL (one BMC per node: https://${env:NODE_NAME}-bmc.example.net)" -}}
{{- end -}}
{{- if and $v.redfish.enabled $v.redfish.password $v.redfish.passwordSecret.secretName -}}
{{- fail "redfish.password and redfish.passwordSecret.secretName are both set: give the password one way" -}}
{{- end -}}
{{- if and $v.redfish.caSecretName (or (not $v.redfish.caFile) (hasPrefix "/" $v.redfish.caFile)) -}}
{{- fail "redfish.caSecretName needs redfish.caFile: the key of that Secret holding the CA certificate (e.g. ca.crt)" -}}
{{- end -}}
{{- if and (include "otel-kepler.ipmiInBand" .) (eq (include "otel-kepler.privilege" .) "low") -}}
{{- fail (printf "ipmi.enabled without ipmi.endpoint reads the node's BMC through /dev/ipmi0, which needs privilege high, but %s asks for low: set ipmi.endpoint (the BMC over the network) or run with privilege high" (include "otel-kepler.privilegeDecision" . | fromJson).reason) -}}
{{- end -}}
{{- end -}}

{{/* .Values.config (a map): the sections of the agent's config, not Kepler's. */}}
{{- define "otel-kepler.checkConfig" -}}
{{- $kepler := dict
  "log" "config.log is Kepler's: use config.service.telemetry.logs.level (debug, info, warning, error)"
  "monitor" "config.monitor is Kepler's: use interval (--set interval=5s) for monitor.interval"
  "rapl" "config.rapl is Kepler's: use config.receivers.rapl (e.g. config.receivers.rapl.zones, privilege high)"
  "exporter" "config.exporter is Kepler's: the Prometheus endpoint is always on (service.port), OTLP is otlp.enabled and otlp.endpoint, the console is extraExporters.debug"
  "web" "config.web is Kepler's: use service.port for the address the agent listens on"
  "debug" "config.debug is Kepler's: the agent has no pprof endpoint; remove it"
  "kube" "config.kube is Kepler's: pod and container names come from the k8sattributes processor, use k8sattributes.enabled (on by default) and k8sattributes.source (kubelet or apiserver)"
  "dev" "config.dev is Kepler's: for power without a meter use privilege=low, whose estimator models it"
  "experimental" "config.experimental is Kepler's: for Redfish use redfish.enabled, redfish.endpoint, redfish.username and redfish.passwordSecret"
-}}
{{- $sections := list "host" "receivers" "processors" "exporters" "service" -}}
{{- range $key, $_ := .Values.config -}}
{{- if hasKey $kepler $key -}}
{{- fail (get $kepler $key) -}}
{{- else if not (has $key $sections) -}}
{{- fail (printf "config.%s is not a section of the agent's config (%s)" $key (join ", " $sections)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
