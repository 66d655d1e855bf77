{{/* Names and labels. */}}
{{- define "paynode.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "paynode.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "paynode.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "paynode.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "paynode.selectorLabels" -}}
app.kubernetes.io/name: {{ include "paynode.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "paynode.secretName" -}}
{{- default (printf "%s-secrets" (include "paynode.fullname" .)) .Values.existingSecret -}}
{{- end -}}

{{- define "paynode.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "paynode.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "paynode.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "paynode.saslEnabled" -}}
{{- if hasPrefix "SASL" (upper .Values.kafka.securityProtocol) -}}true{{- end -}}
{{- end -}}

{{/*
paynode.toml from .Values.config plus the Kafka endpoint/TLS/SASL values.
Rendered by hand instead of with toToml: Helm reads YAML numbers as float64
and toToml would write `500.0`, which the node refuses for integer keys.
*/}}
{{- define "paynode.configDict" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $kafka := dict "brokers" .Values.kafka.brokers "security_protocol" .Values.kafka.securityProtocol -}}
{{- if include "paynode.saslEnabled" . -}}
{{- $_ := set $kafka "sasl_mechanism" .Values.kafka.sasl.mechanism -}}
{{- $_ := set $kafka "sasl_username" .Values.kafka.sasl.username -}}
{{- end -}}
{{- if .Values.kafka.tls.caSecret -}}
{{- $_ := set $kafka "ssl_ca_location" (printf "/etc/paynode/kafka-ca/%s" .Values.kafka.tls.caKey) -}}
{{- end -}}
{{- $_ := set $cfg "kafka" (merge $kafka (default (dict) (get $cfg "kafka"))) -}}
{{- toJson $cfg -}}
{{- end -}}

{{- define "paynode.tomlValue" -}}
{{- if kindIs "string" . -}}
{{- toJson . -}}
{{- else if kindIs "bool" . -}}
{{- . -}}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) -}}
{{- int64 . -}}
{{- else if kindIs "slice" . -}}
[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "paynode.tomlValue" $v }}{{ end }}]
{{- else -}}
{{- fail (printf "paynode.toml: unsupported value %v" .) -}}
{{- end -}}
{{- end -}}

{{/* One TOML table: scalars first, then sub-tables. Keys are quoted. */}}
{{- define "paynode.tomlTable" -}}
{{- $path := .path }}
[{{ $path }}]
{{- range $k, $v := .table }}
{{- if and (not (kindIs "map" $v)) (not (kindIs "invalid" $v)) }}
{{ toJson $k }} = {{ include "paynode.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := .table }}
{{- if kindIs "map" $v }}
{{ include "paynode.tomlTable" (dict "path" (printf "%s.%s" $path (toJson $k)) "table" $v) }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "paynode.toml" -}}
# Rendered by the paynode chart. Secrets and per-group [stages] worker counts
# come from PAYNODE_<SECTION>__<KEY> environment variables.
{{- $cfg := include "paynode.configDict" . | fromJson }}
{{- range $section, $table := $cfg }}
{{ include "paynode.tomlTable" (dict "path" (toJson $section) "table" $table) }}
{{- end }}
{{- end -}}

{{/*
The Secret key of an adapter secret: its name in kebab case (psp_api_key ->
psp-api-key). A name whose key would be one of the node's own credentials is
refused, so an adapter secret can never shadow or read one of them.
*/}}
{{- define "paynode.secretKey" -}}
{{- $key := . | lower | replace "_" "-" -}}
{{- if has $key (list "database-url" "redis-url" "hs256-secret" "kafka-sasl-password") -}}
{{- fail (printf "secrets.%s: the key %s is one of the node's own credentials; choose another name" . $key) -}}
{{- end -}}
{{- if not (regexMatch "^[a-z0-9_]+$" (. | lower)) -}}
{{- fail (printf "secrets.%s: names are letters, digits and underscores (they become PAYNODE_SECRETS__<NAME>)" .) -}}
{{- end -}}
{{- $key -}}
{{- end -}}
