{{/* Pieces the example workloads share. */}}

{{- define "examples.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: {{ .Values.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "examples.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "examples.mlBackendContainer" -}}
- name: ml-backend
  image: {{ .Values.mlBackendImage }}
  imagePullPolicy: IfNotPresent
  env:
    - name: LABEL_STUDIO_URL
      value: {{ .Values.tokenRefresher.url | quote }}
    # Re-read on every call to Label Studio: the token changes every few minutes. Never copy it into an
    # environment variable (LABEL_STUDIO_API_KEY is read once at start and would expire).
    - name: LABEL_STUDIO_AUTHORIZATION_FILE
      value: {{ printf "%s/authorization" .Values.tokenRefresher.tokenDir | quote }}
  ports:
    - name: http
      containerPort: 9090
      protocol: TCP
  livenessProbe:
    httpGet:
      path: /health
      port: http
    periodSeconds: 10
  readinessProbe:
    httpGet:
      path: /health
      port: http
    periodSeconds: 5
  resources:
    requests:
      cpu: 100m
      memory: 256Mi
    limits:
      cpu: "1"
      memory: 1Gi
  securityContext:
    {{- include "examples.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    # The whole directory, read-only (a subPath mount would never see a new token).
    {{- include "ls-token-refresher.sidecar.volumeMount" (dict "config" .Values.tokenRefresher "context" $) | nindent 4 }}
    - name: tmp
      mountPath: /tmp
{{- end }}

{{/* (list $ "name"): the Service Label Studio uses to reach the ML backend. */}}
{{- define "examples.mlBackendService" -}}
{{- $name := index . 1 -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  namespace: {{ (index . 0).Release.Namespace }}
  labels:
    app.kubernetes.io/name: {{ $name }}
spec:
  selector:
    app.kubernetes.io/name: {{ $name }}
  ports:
    - name: http
      port: 9090
      targetPort: http
      protocol: TCP
{{- end }}

{{/*
(list $ "name" ingress?): a NetworkPolicy for an example pod. Egress: DNS and Label Studio only (the refresher in
file mode never calls the Kubernetes API). Ingress (when asked): Label Studio to the ML backend's port and
anyone to the refresher's admin port (/metrics).
*/}}
{{- define "examples.networkPolicy" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- $ingress := index . 2 -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    app.kubernetes.io/name: {{ $name }}
spec:
  podSelector:
    matchLabels:
      app.kubernetes.io/name: {{ $name }}
  policyTypes:
    - Ingress
    - Egress
  {{- if $ingress }}
  ingress:
    - from:
        - podSelector:
            matchLabels:
              {{- toYaml $root.Values.labelStudioPodLabels | nindent 14 }}
      ports:
        - port: http
          protocol: TCP
    - ports:
        - port: ls-admin
          protocol: TCP
  {{- else }}
  ingress: []
  {{- end }}
  egress:
    - to:
        - namespaceSelector:
            matchLabels:
              kubernetes.io/metadata.name: kube-system
          podSelector:
            matchLabels:
              k8s-app: kube-dns
      ports:
        - port: 53
          protocol: UDP
        - port: 53
          protocol: TCP
    - to:
        - podSelector:
            matchLabels:
              {{- toYaml $root.Values.labelStudioPodLabels | nindent 14 }}
      ports:
        - port: {{ $root.Values.labelStudioPort }}
          protocol: TCP
{{- end }}
