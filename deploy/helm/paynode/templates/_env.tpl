{{/*
Environment shared by every group. Only real config keys:
PAYNODE_<SECTION>__<KEY> (figment lower-cases and splits on "__").
*/}}
{{- define "paynode.env" -}}
- name: PAYNODE_HTTP__LISTEN
  value: {{ printf "0.0.0.0:%v" (int .Values.httpPort) | quote }}
- name: PAYNODE_OPS__LISTEN
  value: {{ printf "0.0.0.0:%v" (int .Values.opsPort) | quote }}
- name: PAYNODE_DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "paynode.secretName" . }}
      key: database-url
- name: PAYNODE_REDIS__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "paynode.secretName" . }}
      key: redis-url
- name: PAYNODE_AUTH__HS256_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "paynode.secretName" . }}
      key: hs256-secret
{{- if include "paynode.saslEnabled" . }}
- name: PAYNODE_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "paynode.secretName" . }}
      key: kafka-sasl-password
{{- end }}
{{- range $name, $_ := .Values.secrets }}
- name: PAYNODE_SECRETS__{{ upper $name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "paynode.secretName" $ }}
      key: {{ include "paynode.secretKey" $name }}
      optional: true
{{- end }}
{{- end -}}

{{- define "paynode.volumeMounts" -}}
- name: config
  mountPath: /etc/paynode/config
  readOnly: true
- name: component-cache
  mountPath: /var/cache/paynode
- name: tmp
  mountPath: /tmp
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  mountPath: /etc/paynode/kafka-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "paynode.volumes" -}}
- name: config
  configMap:
    name: {{ include "paynode.fullname" . }}-config
- name: component-cache
  emptyDir: {}
- name: tmp
  emptyDir: {}
{{- if .Values.kafka.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret }}
{{- end }}
{{- end -}}
